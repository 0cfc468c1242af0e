"""Regularization terms for the Reg step, as pure functions of tensors (differentiable, testable).

Sources:

* orthogonality + Hoyer on SVD factors: PETRA (Revin et al., "Automated Evolutionary Optimization
  for Resource-Efficient Neural Network Training", arXiv:2510.09566), following the SVD training of
  Yang et al. ("Learning Low-rank Deep Neural Networks via Singular Vector Orthogonality
  Regularization and Singular Value Sparsification", CVPR-W 2020);
* Lai loss: Y. Lai, "Lai Loss: A Novel Loss for Gradient Control", arXiv:2405.07884;
* sparsity: Bonetta, Ribero and Cancelliere, "Regularization-based Pruning of Irrelevant Weights in
  Deep Neural Architectures", arXiv:2204.04977 (Applied Intelligence 2023);
* Norm loss: Georgiou et al., "Norm Loss: An efficient yet effective regularization method for deep
  neural networks", arXiv:2103.06583 (ICPR 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def orthogonality_loss(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """L_O(U, V) = (||U^T U - I||_F^2 + ||V^T V - I||_F^2) / r^2 for U (m x r) and V (n x r).

    Zero when both factors have orthonormal columns, so that S alone carries the spectrum and the
    Hoyer term on S acts on the layer's true singular values.
    """
    r = u.shape[1]
    eye = torch.eye(r, dtype=u.dtype, device=u.device)
    return ((u.T @ u - eye).square().sum() + (v.T @ v - eye).square().sum()) / r**2


def hoyer_loss(s: torch.Tensor) -> torch.Tensor:
    """L_H(S) = ||S||_1 / ||S||_2: a scale-invariant sparsity measure, minimal (1) at rank one.

    Hoyer, "Non-negative matrix factorization with sparseness constraints", JMLR 2004.  Being
    scale invariant, it concentrates the spectrum without shrinking the layer's overall gain.
    """
    return s.abs().sum() / s.square().sum().sqrt()


def orth_hoyer_penalty(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    lambda_o: float,
    lambda_h: float,
) -> torch.Tensor:
    """(lambda_O/|D|) sum_D L_O(U, V) + (lambda_H/|D|) sum_D L_H(S) over layers D = (U, S, V)."""
    if not factors:
        raise ValueError("no decomposed layers to regularize")
    orth = torch.stack([orthogonality_loss(u, v) for u, _, v in factors]).mean()
    hoyer = torch.stack([hoyer_loss(s) for _, s, _ in factors]).mean()
    return lambda_o * orth + lambda_h * hoyer


def lai_loss(errors: torch.Tensor, slopes: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Lai loss: mean_i e_i * max(sin t_i, lam cos t_i) for lam >= 1, else max(sin t_i / lam, cos t_i).

    ``errors`` are per-sample losses e_i and ``slopes`` the model's gradient magnitudes
    k_i = ||d f(x_i) / d x_i|| (tan t_i = k_i, so sin t = k / sqrt(1 + k^2), cos t = 1 / sqrt(1 + k^2)).
    The paper draws the error of a prediction against the fitted curve: its projection on the
    curve is e sin t and its distance to it e cos t, and the loss keeps the larger one.  lam < 1
    raises the price of steep gradients (smoothness), lam > 1 that of flat ones; lam = 1 is the
    paper's original form.  The lam branches follow arXiv:2405.07884 v2 as reimplemented in FedCore
    (the PETRA authors' framework, ``fedcore/losses/regularization_losses.py``).
    """
    norm = (1 + slopes.square()).sqrt()
    sin, cos = slopes / norm, 1 / norm
    weight = torch.maximum(sin, lam * cos) if lam >= 1 else torch.maximum(sin / lam, cos)
    return (errors * weight).mean()


def sparsity_loss(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Selective weight decay sum_j w_j^2 exp(-|g_j| / mean|g|) (Bonetta et al. 2022).

    Weights whose loss gradient g is small are irrelevant and are shrunk like weight decay;
    relevant ones (large |g|) are left to the plain back-propagation update.  ``grad`` is a constant
    (the current batch's data-loss gradient, no second-order term), as in the paper's update rule.
    We could not read the paper's exact equation; this follows the form exp(-|dL/dw|) w^2 of
    FedCore's reimplementation, with |g| divided by its mean over the tensor: raw gradients are
    ~1e-3, for which exp(-|g|) ~ 1 and the term would degenerate to plain weight decay.
    """
    g = grad.detach().abs()
    relevance = g / g.mean().clamp_min(torch.finfo(g.dtype).tiny)
    return (weight.square() * torch.exp(-relevance)).sum()


def norm_loss(weight: torch.Tensor) -> torch.Tensor:
    """Norm loss sum_i (1 - ||w_i||_2)^2 over the output units w_i (rows, filters) of one layer.

    Softly steers the weight matrix to the Oblique manifold (every unit's weight vector of norm 1),
    which removes the scaling symmetry of layers followed by normalization (Georgiou et al. 2021).
    """
    norms = weight.reshape(weight.shape[0], -1).norm(dim=1)
    return (1 - norms).square().sum()
