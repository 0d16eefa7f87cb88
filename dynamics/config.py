"""The knobs of one meta-reweighting run, without JAX: what commands validate before the slow imports."""

from __future__ import annotations

import dataclasses

from dynamics.checks import integer, real

LOSSES = ("mse", "ce")
VARIANTS = ("meta", "l2rw", "fixed")
MAX_STEPS = 10**8  # beyond this a run is a typo; smaller runs are still checked against memory by the callers
MAX_PERTURB_DRAWS = 1000


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Every knob of one simulation (docs/theory.md section 2).

    loss : ``"mse"`` (``0.5 ||f - y||^2``) or ``"ce"`` (softmax cross-entropy).
    variant : ``"meta"`` (persistent clipped weights), ``"l2rw"`` (Ren et al.
        2018: weights ``max(score, 0)`` normalised over the batch each step, the
        look-ahead taken at ``w = 0``), ``"fixed"`` (``beta = 0``: weighted
        kernel gradient descent).
    eta : model step size; ``None`` takes ``1 / lambda_max(K_XX)``, or
        ``1 / lambda_max`` of the joint weighted kernel if that one is larger than
        twice the first (then ``1/lambda_max(K_XX)`` would not be stable).
    beta : meta step size (the weights move by ``(beta / m) * score``).
    gamma : weight of the clean-subset loss in the model's own training loss.
    w0 : initial weight of every training example.
    steps : number of steps.
    batch_size, meta_batch_size : mini-batch sizes (``None``: full batch).
    record_every : record every k-th step (and always the first and last state).
    perturb_eps, perturb_draws : the C7 protocol (relative perturbation size and
        number of draws per recorded step; ``perturb_draws = 0`` skips it).
    """

    loss: str = "mse"
    variant: str = "meta"
    eta: float | None = None
    beta: float = 1.0
    gamma: float = 1.0
    w0: float = 0.5
    steps: int = 2000
    batch_size: int | None = None
    meta_batch_size: int | None = None
    record_every: int = 1
    perturb_eps: float = 0.01
    perturb_draws: int = 1

    def __post_init__(self):
        check_run_knobs(self)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        real("w0", self.w0, 0.0, 1.0)
        for name in ("batch_size", "meta_batch_size"):
            if getattr(self, name) is not None:
                integer(name, getattr(self, name), 1)
        real("perturb_eps", self.perturb_eps, 0.0)
        integer("perturb_draws", self.perturb_draws, 0, MAX_PERTURB_DRAWS)


def check_run_knobs(config) -> None:
    """Raise ``ValueError`` for a bad knob of those every run's configuration has (:class:`MetaConfig`,
    :class:`dynamics.mwn.MWNConfig`): ``loss``, ``eta``, ``beta``, ``gamma``, ``steps``, ``record_every``."""
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    if config.eta is not None:
        real("eta", config.eta, 0.0, strict_low=True)
    real("beta", config.beta, 0.0)
    real("gamma", config.gamma, 0.0)
    integer("steps", config.steps, 1, MAX_STEPS)
    integer("record_every", config.record_every, 1, int(config.steps))
