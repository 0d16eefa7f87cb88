"""Problems, the exact linearized simulator, finite-width training, the surrogate and the methods.

Public names are re-exported here and imported on first use, so that ``import
dynamics`` does not load JAX or torch until a name that needs them is touched.
"""

from kernels.lazy import lazy_exports

_EXPORTS = {
    "dynamics.problem": ("Problem", "corrupt_labels", "digits", "gaussian_mixture", "transition_matrix"),
    "dynamics.trajectory": ("Trajectory", "weight_stats"),
    "dynamics.config": ("MetaConfig",),
    "dynamics.simulator": ("DivergenceError", "SimState", "default_eta", "gp_prior_outputs",
                           "meta_score", "predict_test", "simulate", "simulate_many"),
    "dynamics.operators": ("FeatureKernel", "KernelBlocks"),
    "dynamics.surrogate": ("CleanReference", "ReweightResult", "alpha0_schedule", "class_similarities",
                           "clean_reference", "modulated_scores", "reweight", "sign_agreement", "weights_from_scores"),
    "dynamics.cifar": ("DataError", "ImageProblem", "cifar10n_problem", "load_cifar10_images", "load_cifar10n_labels",
                       "verify_checksums"),
    "dynamics.cnn": ("SmallCNN", "augment", "normalise"),
    "dynamics.finite": ("FiniteNetwork", "NetworkConfig", "analytic_kernel", "bilevel_score", "closed_form_score",
                        "linearized_test_outputs", "train_finite", "train_finite_with_outputs"),
    "dynamics.bilevel": ("meta_step", "meta_weight_gradient", "per_example_loss"),
    "dynamics.mwn": ("MWNConfig", "MWNRun", "init_weight_net", "simulate_mwn", "train_finite_mwn"),
    "dynamics.recipes": ("IndexedDataset", "MetaReweighter", "clean_subset_features", "mode_free",
                         "penultimate_features", "surrogate_batch_weights"),
    "dynamics.methods": ("METHODS", "Method", "MethodResult", "MethodUnavailable", "TrainBudget", "TrainingData",
                         "TrainingDiverged", "train"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
