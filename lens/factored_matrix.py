"""A low-rank matrix product ``A @ B`` kept in factored form.

Many interpretability objects are products of two thin matrices: an attention
head's OV circuit ``W_V @ W_O`` is ``[d_model, d_head] @ [d_head, d_model]`` and
its QK circuit is ``W_Q @ W_K.T``. Materialising them costs ``d_model**2``
memory per head and throws away the knowledge that the rank is at most
``d_head``. :class:`FactoredMatrix` keeps the two factors, does matrix algebra
on them (products stay factored, through the smaller inner dimension), and
computes SVD, eigenvalues and norms from the factors alone.

The semantics and names follow TransformerLens's ``FactoredMatrix``: ``svd()``
returns ``(U, S, V)`` with ``U @ torch.diag_embed(S) @ V.mT == AB`` (``V`` is
``[..., rdim, k]``, not its transpose), and ``.Vh`` is TransformerLens's name for
that same ``V``; ``eigenvalues`` are those of ``B @ A`` (``mdim`` of them).

Example::

    >>> W_V, W_O = torch.randn(12, 768, 64), torch.randn(12, 64, 768)
    >>> OV = FactoredMatrix(W_V, W_O)  # 12 heads, each a rank-64 768x768 matrix
    >>> OV.shape, OV.mdim
    (torch.Size([12, 768, 768]), 64)
    >>> OV.norm().shape  # Frobenius norm per head, without forming 768x768
    torch.Size([12])
"""

from __future__ import annotations

import torch
from jaxtyping import Complex, Float

__all__ = ["FactoredMatrix"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype to run decompositions in: float32 for half/bfloat16/integer inputs."""
    dtype = torch.promote_types(tensors[0].dtype, tensors[-1].dtype)
    if dtype in _LOW_PRECISION or not (dtype.is_floating_point or dtype.is_complex):
        return torch.float32
    return dtype


def _result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype decompositions return: the factors' (promoted) float dtype, float32 for integers."""
    dtype = torch.promote_types(tensors[0].dtype, tensors[-1].dtype)
    return dtype if dtype.is_floating_point or dtype.is_complex else torch.float32


def _int_to_slice(i):
    """Turn an integer index into a length-1 slice, so indexed matrix dims are kept."""
    if isinstance(i, int):
        return slice(i, i + 1 if i != -1 else None)
    return i


class FactoredMatrix:
    """The matrix ``A @ B``, stored as its factors ``A`` and ``B``.

    ``A`` is ``[..., ldim, mdim]`` and ``B`` is ``[..., mdim, rdim]``; leading
    (batch) dims broadcast, and both factors are stored broadcast to the full
    leading shape (as views, so this is free).

    Example::

        >>> fm = FactoredMatrix(torch.randn(5, 2), torch.randn(2, 4))
        >>> fm.shape, fm.mdim, fm.AB.shape
        (torch.Size([5, 4]), 2, torch.Size([5, 4]))
    """

    def __init__(
        self,
        A: Float[torch.Tensor, "... ldim mdim"],
        B: Float[torch.Tensor, "... mdim rdim"],
    ) -> None:
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(
                f"FactoredMatrix factors must have at least 2 dims, got A {tuple(A.shape)} and B {tuple(B.shape)}"
            )
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"FactoredMatrix inner dims mismatch: A {tuple(A.shape)} has {A.shape[-1]} columns "
                f"but B {tuple(B.shape)} has {B.shape[-2]} rows"
            )
        try:
            lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as err:
            raise ValueError(
                f"FactoredMatrix leading dims do not broadcast: A {tuple(A.shape)}, B {tuple(B.shape)}"
            ) from err
        self.ldim: int = A.shape[-2]
        self.mdim: int = A.shape[-1]
        self.rdim: int = B.shape[-1]
        self.has_leading_dims: bool = len(lead) > 0
        self.shape: torch.Size = torch.Size(lead + (self.ldim, self.rdim))
        self.A: Float[torch.Tensor, "... ldim mdim"] = A.broadcast_to(lead + (self.ldim, self.mdim))
        self.B: Float[torch.Tensor, "... mdim rdim"] = B.broadcast_to(lead + (self.mdim, self.rdim))
        self._svd_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ algebra
    def __matmul__(self, other: torch.Tensor | FactoredMatrix) -> FactoredMatrix | Float[torch.Tensor, "... ldim"]:
        """``self @ other``. A vector gives a vector; a matrix or FactoredMatrix
        gives a FactoredMatrix whose inner dim is the smaller of the candidates.

        Example::

            >>> (fm @ torch.randn(4)).shape, (fm @ torch.randn(4, 3)).shape
            (torch.Size([5]), torch.Size([5, 3]))
        """
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        if other.ndim == 0:
            raise ValueError("Cannot matmul a FactoredMatrix with a 0-dim tensor; use * for scalars")
        dim = -1 if other.ndim == 1 else -2
        if other.shape[dim] != self.rdim:
            raise ValueError(f"Shape mismatch in FactoredMatrix @ tensor: {tuple(self.shape)} @ {tuple(other.shape)}")
        if other.ndim == 1:
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: torch.Tensor | FactoredMatrix) -> FactoredMatrix | Float[torch.Tensor, "... rdim"]:
        """``other @ self``, mirroring :meth:`__matmul__`.

        Example::

            >>> (torch.randn(5) @ fm).shape, (torch.randn(3, 5) @ fm).shape
            (torch.Size([4]), torch.Size([3, 4]))
        """
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        if other.ndim == 0:
            raise ValueError("Cannot matmul a 0-dim tensor with a FactoredMatrix; use * for scalars")
        if other.shape[-1] != self.ldim:
            raise ValueError(f"Shape mismatch in tensor @ FactoredMatrix: {tuple(other.shape)} @ {tuple(self.shape)}")
        if other.ndim == 1:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: int | float | torch.Tensor) -> FactoredMatrix:
        """Scalar multiplication (scales ``A``). Example: ``(2 * fm).AB == 2 * fm.AB``."""
        if isinstance(scalar, torch.Tensor):
            if scalar.numel() != 1:
                raise ValueError(f"FactoredMatrix can only be multiplied by a scalar, got shape {tuple(scalar.shape)}")
        elif not isinstance(scalar, (int, float)):
            return NotImplemented
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: int | float | torch.Tensor) -> FactoredMatrix:
        return self * scalar

    @property
    def AB(self) -> Float[torch.Tensor, "... ldim rdim"]:
        """The materialised product ``A @ B`` (costs ``ldim * rdim`` memory)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[torch.Tensor, "... mdim mdim"]:
        """``B @ A``: the small ``mdim x mdim`` matrix sharing ``AB``'s nonzero eigenvalues.

        Only defined for square matrices (``ldim == rdim``).
        """
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square FactoredMatrix, got shape {tuple(self.shape)}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose, still factored: ``(AB).T == B.T @ A.T``."""
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors as a tuple ``(A, B)``."""
        return self.A, self.B

    # ------------------------------------------------------------ decompositions
    def svd(
        self,
    ) -> tuple[
        Float[torch.Tensor, "... ldim k"],
        Float[torch.Tensor, "... k"],
        Float[torch.Tensor, "... rdim k"],
    ]:
        """Thin SVD of ``AB`` from the factors: ``(U, S, V)`` with ``AB == U @ diag(S) @ V.mT``.

        As in TransformerLens, the third element is ``V`` (``[..., rdim, k]``, columns are right
        singular vectors), not ``Vh``; ``k = min(ldim, mdim, rdim)``. Why factored: QR-factor
        ``A = Qa Ra`` and ``B.T = Qb Rb``, so ``AB = Qa (Ra Rb.T) Qb.T`` and only the small core
        (at most ``mdim x mdim``) is decomposed. Half/bfloat16 inputs are decomposed in float32
        (torch.linalg has no 16-bit SVD) and returned in their own dtype. Singular vectors are
        unique only up to sign. Cached.

        Example::

            >>> U, S, V = fm.svd()
            >>> torch.allclose(U @ torch.diag_embed(S) @ V.mT, fm.AB, atol=1e-5)
            True
        """
        if self._svd_cache is None:
            dtype, out = _compute_dtype(self.A, self.B), _result_dtype(self.A, self.B)
            Qa, Ra = torch.linalg.qr(self.A.to(dtype))
            Qb, Rb = torch.linalg.qr(self.B.to(dtype).mT)
            Uc, S, Vhc = torch.linalg.svd(Ra @ Rb.mT, full_matrices=False)
            U, V = Qa @ Uc, Qb @ Vhc.mT
            self._svd_cache = (U.to(out), S.to(out.to_real() if out.is_complex else out), V.to(out))
        return self._svd_cache

    @property
    def U(self) -> Float[torch.Tensor, "... ldim k"]:
        """Left singular vectors of ``AB`` (columns), see :meth:`svd`."""
        return self.svd()[0]

    @property
    def S(self) -> Float[torch.Tensor, "... k"]:
        """Singular values of ``AB`` in descending order, see :meth:`svd`."""
        return self.svd()[1]

    @property
    def V(self) -> Float[torch.Tensor, "... rdim k"]:
        """Right singular vectors of ``AB`` (columns), so ``AB == U @ diag(S) @ V.mT``."""
        return self.svd()[2]

    @property
    def Vh(self) -> Float[torch.Tensor, "... rdim k"]:
        """TransformerLens's name for :attr:`V` (it is ``V``, ``[..., rdim, k]``, not its transpose).

        Kept so TransformerLens code such as ``U @ diag(S) @ fm.Vh.T`` gives the same numbers.
        """
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[torch.Tensor, "... mdim"]:
        """Eigenvalues of ``B @ A`` (square ``AB`` only), as TransformerLens.

        ``AB`` and ``BA`` share their nonzero eigenvalues (if ``BAv = kv`` then ``AB(Av) = k Av``),
        so the ``mdim`` eigenvalues of the small ``BA`` hold all of ``AB``'s nonzero ones; when
        ``mdim > ldim`` the extra ones are zero. Complex dtype (complex64 for 16-bit inputs, which
        are computed in float32).

        Example::

            >>> FactoredMatrix(torch.randn(768, 64), torch.randn(64, 768)).eigenvalues.shape
            torch.Size([64])
        """
        if self.ldim != self.rdim:
            raise ValueError(f"eigenvalues need a square FactoredMatrix (ldim == rdim), got shape {tuple(self.shape)}")
        dtype = _compute_dtype(self.A, self.B)
        return torch.linalg.eigvals(self.B.to(dtype) @ self.A.to(dtype))

    def norm(self) -> Float[torch.Tensor, "..."]:
        """Frobenius norm of ``AB`` (per leading index), as ``sqrt(sum(S**2))``."""
        return self.S.pow(2).sum(-1).sqrt()

    def collapse_l(self) -> Float[torch.Tensor, "... k rdim"]:
        """Drop the orthogonal left factor: returns ``diag(S) @ V.mT`` with ``AB == U @ collapse_l()``."""
        return self.S[..., :, None] * self.V.mT

    def collapse_r(self) -> Float[torch.Tensor, "... ldim k"]:
        """Drop the orthogonal right factor: returns ``U @ diag(S)`` with ``AB == collapse_r() @ V.mT``."""
        return self.U * self.S[..., None, :]

    def make_even(self) -> FactoredMatrix:
        """An equivalent, balanced factorisation ``(U sqrt(S), sqrt(S) V.mT)``.

        Each half carries half the singular value mass and has orthogonal
        columns/rows, which makes the factors comparable between heads.
        """
        sqrt_s = self.S.sqrt()
        return FactoredMatrix(self.U * sqrt_s[..., None, :], sqrt_s[..., :, None] * self.V.mT)

    # ----------------------------------------------------------------- indexing
    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The first ``k`` entries along every dim of ``AB`` (TransformerLens semantics).

        For a plain matrix this is the top-left ``k x k`` block; only ``k`` rows of
        ``A`` and ``k`` columns of ``B`` are multiplied. Example: ``fm.get_corner(2)``.
        """
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    def __getitem__(self, idx) -> FactoredMatrix:
        """Index leading dims, and optionally rows/cols of the product.

        Integer indices on the last two dims become length-1 slices, so the result
        is always a FactoredMatrix (as in TransformerLens).

        Example::

            >>> OV[3].shape, OV[3, :10].shape, OV[3, 5, 2:4].shape
            (torch.Size([768, 768]), torch.Size([10, 768]), torch.Size([1, 2]))
        """
        if not isinstance(idx, tuple):
            idx = (idx,)
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        ellipses = [p for p, i in enumerate(idx) if i is Ellipsis]
        if len(ellipses) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if ellipses:
            p = ellipses[0]
            idx = idx[:p] + (slice(None),) * (self.ndim - n_real) + idx[p + 1 :]
            n_real = self.ndim
        if n_real > self.ndim:
            raise IndexError(f"too many indices for FactoredMatrix of shape {tuple(self.shape)}")
        n_lead = self.ndim - 2
        real_pos = [p for p, i in enumerate(idx) if i is not None]
        if n_real <= n_lead:
            return FactoredMatrix(self.A[idx], self.B[idx])
        lead, mat = idx[: real_pos[n_lead]], idx[real_pos[n_lead] :]
        if any(i is None for i in mat):
            raise IndexError("None (new axis) is only supported among the leading dims of a FactoredMatrix")
        row = _int_to_slice(mat[0])
        col = _int_to_slice(mat[1]) if len(mat) > 1 else slice(None)
        return FactoredMatrix(self.A[lead + (row, slice(None))], self.B[lead + (slice(None), col)])

    @property
    def ndim(self) -> int:
        """Number of dims of the (virtual) product, leading dims included."""
        return len(self.shape)

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """Insert a size-1 leading dim at position ``k`` (must be before the matrix dims).

        Example: ``FactoredMatrix(torch.randn(5, 2), torch.randn(2, 4)).unsqueeze(0).shape == (1, 5, 4)``.
        """
        pos = k if k >= 0 else self.ndim + 1 + k
        if not 0 <= pos <= self.ndim - 2:
            raise ValueError(
                f"unsqueeze dim {k} must be a leading dim (new position 0..{self.ndim - 2}) "
                f"for FactoredMatrix of shape {tuple(self.shape)}"
            )
        return FactoredMatrix(self.A.unsqueeze(pos), self.B.unsqueeze(pos))

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"
