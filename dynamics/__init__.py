"""Problems, the exact linearized simulator, finite-width training, the surrogate and the methods.

Public names are re-exported here and imported on first use, so that ``import
dynamics`` does not load JAX or torch until a name that needs them is touched.
"""

import importlib

_EXPORTS = {
    "dynamics.problem": ("Problem", "corrupt_labels", "digits", "gaussian_mixture", "transition_matrix"),
    "dynamics.trajectory": ("Trajectory", "weight_stats"),
    "dynamics.simulator": ("DivergenceError", "MetaConfig", "SimState", "default_eta", "gp_prior_outputs",
                           "meta_score", "predict_test", "simulate"),
    "dynamics.operators": ("FeatureKernel", "KernelBlocks"),
    "dynamics.surrogate": ("ReweightResult", "alpha0_schedule", "class_similarities", "modulated_scores", "reweight",
                           "sign_agreement", "weights_from_scores"),
    "dynamics.cifar": ("DataError", "ImageProblem", "cifar10n_problem", "load_cifar10_images", "load_cifar10n_labels",
                       "verify_checksums"),
    "dynamics.cnn": ("SmallCNN", "augment", "normalise"),
    "dynamics.finite": ("FiniteNetwork", "NetworkConfig", "bilevel_score", "closed_form_score", "train_finite"),
    "dynamics.bilevel": ("meta_step", "meta_weight_gradient", "per_example_loss"),
    "dynamics.recipes": ("IndexedDataset", "MetaReweighter", "clean_subset_features", "penultimate_features",
                         "surrogate_batch_weights"),
    "dynamics.methods": ("METHODS", "Method", "MethodResult", "MethodUnavailable", "TrainBudget", "TrainingData",
                         "TrainingDiverged", "train"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'dynamics' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__():
    return __all__
