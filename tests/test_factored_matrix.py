"""Tests for lens.factored_matrix: every result must equal the materialised product."""

import numpy as np
import pytest
import torch

from lens.factored_matrix import FactoredMatrix

ATOL = 1e-4


def close(x, y, atol=ATOL):
    torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def sorted_nonzero_eigs(x, tol=1e-6):
    """Nonzero eigenvalues, sorted by (real, imag) after rounding, as complex128 numpy."""
    x = x.detach().to(torch.complex128).numpy()
    x = x[np.abs(x) > tol]
    return np.sort_complex(np.round(x, 6))


# Shapes: (ldim, mdim, rdim) covering low rank, mdim > ldim and mdim > rdim.
DIMS = [(6, 2, 5), (5, 3, 5), (3, 7, 4), (8, 8, 8), (1, 4, 6)]


@pytest.mark.parametrize("ldim,mdim,rdim", DIMS)
def test_basic_properties(ldim, mdim, rdim):
    A, B = rand(ldim, mdim), rand(mdim, rdim)
    fm = FactoredMatrix(A, B)
    assert (fm.ldim, fm.mdim, fm.rdim) == (ldim, mdim, rdim)
    assert fm.shape == torch.Size([ldim, rdim]) and fm.ndim == 2
    assert not fm.has_leading_dims
    close(fm.AB, A @ B)
    close(fm.T.AB, (A @ B).T)
    assert fm.pair[0] is fm.A and fm.pair[1] is fm.B
    assert repr(fm) == f"FactoredMatrix: Shape({torch.Size([ldim, rdim])}), Hidden Dim({mdim})"


def test_BA_square_only():
    A, B = rand(6, 3), rand(3, 6)
    close(FactoredMatrix(A, B).BA, B @ A)
    with pytest.raises(ValueError, match="square"):
        _ = FactoredMatrix(rand(6, 3), rand(3, 5)).BA


@pytest.mark.parametrize("ldim,mdim,rdim", DIMS)
def test_matmul_tensor(ldim, mdim, rdim):
    fm = FactoredMatrix(rand(ldim, mdim), rand(mdim, rdim))
    AB = fm.AB
    v, M = rand(rdim), rand(rdim, 3)
    close(fm @ v, AB @ v)
    out = fm @ M
    assert isinstance(out, FactoredMatrix)
    assert out.mdim == min(mdim, rdim)
    close(out.AB, AB @ M)
    w, N = rand(ldim), rand(4, ldim)
    close(w @ fm, w @ AB)
    out = N @ fm
    assert isinstance(out, FactoredMatrix)
    assert out.mdim == min(mdim, ldim)
    close(out.AB, N @ AB)


@pytest.mark.parametrize("m1,m2", [(2, 3), (3, 2), (9, 9)])
def test_matmul_factored(m1, m2):
    f1 = FactoredMatrix(rand(5, m1), rand(m1, 7))
    f2 = FactoredMatrix(rand(7, m2), rand(m2, 4))
    out = f1 @ f2
    assert isinstance(out, FactoredMatrix)
    assert out.shape == torch.Size([5, 4])
    assert out.mdim == min(m1, m2, 7)
    close(out.AB, f1.AB @ f2.AB)
    close(f2.__rmatmul__(f1).AB, f1.AB @ f2.AB)


def test_batched_broadcasting():
    A = rand(3, 1, 6, 2)  # [layer, 1, ldim, mdim]
    B = rand(4, 2, 6)  # [head, mdim, rdim]
    fm = FactoredMatrix(A, B)
    assert fm.shape == torch.Size([3, 4, 6, 6]) and fm.has_leading_dims
    assert fm.A.shape == (3, 4, 6, 2) and fm.B.shape == (3, 4, 2, 6)
    AB = A @ B
    close(fm.AB, AB)
    close(fm.BA, fm.B @ fm.A)
    close(fm.T.AB, AB.transpose(-2, -1))
    v = rand(6)
    close(fm @ v, AB @ v)
    close(v @ fm, v @ AB)
    M = rand(4, 6, 3)  # broadcasts over the layer dim
    close((fm @ M).AB, AB @ M)
    close((M.transpose(-2, -1) @ fm).AB, M.transpose(-2, -1) @ AB)
    other = FactoredMatrix(rand(6, 5), rand(5, 2))
    close((fm @ other).AB, AB @ other.AB)
    close((other.T @ fm).AB, other.T.AB @ AB)


def test_scalar_mul():
    fm = FactoredMatrix(rand(4, 2), rand(2, 3))
    close((fm * 2.5).AB, 2.5 * fm.AB)
    close((3 * fm).AB, 3 * fm.AB)
    close((fm * torch.tensor(-1.5)).AB, -1.5 * fm.AB)
    with pytest.raises(ValueError):
        fm * torch.ones(3)


@pytest.mark.parametrize("lead", [(), (2, 3)])
@pytest.mark.parametrize("ldim,mdim,rdim", DIMS)
def test_svd(lead, ldim, mdim, rdim):
    fm = FactoredMatrix(rand(*lead, ldim, mdim), rand(*lead, mdim, rdim))
    AB = fm.AB
    U, S, V = fm.svd()  # V as TransformerLens: [rdim, k], AB == U diag(S) V^T
    k = min(ldim, mdim, rdim)
    assert U.shape == (*lead, ldim, k) and S.shape == (*lead, k) and V.shape == (*lead, rdim, k)
    close(U @ torch.diag_embed(S) @ V.mT, AB)
    close(S, torch.linalg.svdvals(AB)[..., :k])
    eye = torch.eye(k).expand(*lead, k, k)
    close(U.mT @ U, eye)
    close(V.mT @ V, eye)
    assert fm.U is U and fm.S is S and fm.V is V and fm.Vh is V  # cached; .Vh is TL's name for V
    close(fm.norm(), torch.linalg.norm(AB, dim=(-2, -1)))
    close(fm.U @ fm.collapse_l(), AB)
    close(fm.collapse_r() @ fm.V.mT, AB)
    even = fm.make_even()
    close(even.AB, AB)
    close(even.A.mT @ even.A, even.B @ even.B.mT)  # balanced: both Gram matrices are diag(S)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_svd_low_precision_computes_in_float32(dtype):
    A, B = rand(6, 3).to(dtype), rand(3, 5).to(dtype)
    U, S, V = FactoredMatrix(A, B).svd()  # torch.linalg has no 16-bit SVD on CPU; returned in the input dtype
    assert U.dtype == S.dtype == V.dtype == dtype
    AB = A.float() @ B.float()
    close(U.float() @ torch.diag_embed(S.float()) @ V.float().mT, AB, atol=0.1)
    close(S.float(), torch.linalg.svdvals(AB)[:3], atol=0.05)
    sq = FactoredMatrix(rand(5, 3).bfloat16(), rand(3, 5).bfloat16())
    assert sq.eigenvalues.dtype == torch.complex64


@pytest.mark.parametrize("lead", [(), (3,)])
@pytest.mark.parametrize("n,m", [(6, 2), (5, 5), (3, 7)])
def test_eigenvalues(lead, n, m):
    A = rand(*lead, n, m, dtype=torch.float64)
    B = rand(*lead, m, n, dtype=torch.float64)
    fm = FactoredMatrix(A, B)
    eig = fm.eigenvalues
    assert eig.shape == (*lead, m)  # eigenvalues of B @ A, as TransformerLens
    close(eig, torch.linalg.eigvals(B @ A))
    ref = torch.linalg.eigvals(A @ B)
    for ours, theirs in zip(eig.reshape(-1, eig.shape[-1]), ref.reshape(-1, ref.shape[-1])):
        np.testing.assert_allclose(sorted_nonzero_eigs(ours), sorted_nonzero_eigs(theirs), atol=1e-5)
    for a, b in [((4, 2), (2, 3)), ((2, 4), (4, 3))]:
        with pytest.raises(ValueError, match="square"):
            _ = FactoredMatrix(rand(*a), rand(*b)).eigenvalues


def test_get_corner():
    fm = FactoredMatrix(rand(6, 2), rand(2, 5))
    close(fm.get_corner(3), fm.AB[:3, :3])
    close(fm.get_corner(10), fm.AB)
    batched = FactoredMatrix(rand(4, 6, 2), rand(4, 2, 5))
    close(batched.get_corner(2), batched.AB[:2, :2, :2])


def test_indexing():
    A, B = rand(3, 4, 6, 2), rand(3, 4, 2, 5)
    fm = FactoredMatrix(A, B)
    AB = fm.AB
    close(fm[1].AB, AB[1])
    close(fm[1, 2].AB, AB[1, 2])
    close(fm[:, 1:3].AB, AB[:, 1:3])
    close(fm[1, 2, 1:4].AB, AB[1, 2, 1:4])
    close(fm[1, 2, 3].AB, AB[1, 2, 3:4])  # int on a matrix dim keeps it, as in TL
    close(fm[1, 2, -1].AB, AB[1, 2, -1:])
    close(fm[1, 2, :, 2:4].AB, AB[1, 2, :, 2:4])
    close(fm[0, 0, 5, 4].AB, AB[0, 0, 5:6, 4:5])
    close(fm[..., 1:3].AB, AB[..., 1:3])
    close(fm[1, ...].AB, AB[1])
    close(fm[None, 1].AB, AB[None, 1])
    close(fm[torch.tensor([0, 2])].AB, AB[[0, 2]])
    with pytest.raises(IndexError):
        fm[0, 0, 0, 0, 0]


def test_unsqueeze():
    fm = FactoredMatrix(rand(3, 6, 2), rand(3, 2, 5))
    assert fm.unsqueeze(0).shape == (1, 3, 6, 5)
    assert fm.unsqueeze(1).shape == (3, 1, 6, 5)
    assert fm.unsqueeze(-3).shape == (3, 1, 6, 5)
    close(fm.unsqueeze(0).AB, fm.AB.unsqueeze(0))
    with pytest.raises(ValueError):
        fm.unsqueeze(-1)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 5\)"):
        FactoredMatrix(rand(4, 3), rand(2, 5))
    with pytest.raises(ValueError, match="at least 2"):
        FactoredMatrix(rand(4), rand(4, 2))
    with pytest.raises(ValueError, match="broadcast"):
        FactoredMatrix(rand(2, 4, 3), rand(3, 3, 5))
    fm = FactoredMatrix(rand(4, 3), rand(3, 5))
    with pytest.raises(ValueError, match="mismatch"):
        fm @ rand(4)
    with pytest.raises(ValueError, match="mismatch"):
        fm @ rand(4, 2)
    with pytest.raises(ValueError, match="mismatch"):
        rand(5) @ fm
    with pytest.raises(ValueError, match="mismatch"):
        fm @ FactoredMatrix(rand(4, 2), rand(2, 2))
