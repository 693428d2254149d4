"""FactoredMatrix as TransformerLens 2.x code uses it: ``svd()`` returns V (not Vh), ``.Vh`` is that V,
``eigenvalues`` are B @ A's, ``.BA`` with non-square factors, bfloat16 factors.

Oracles: the materialised product (exact math, always run) and TransformerLens's own FactoredMatrix on the
same tensors (optional; skipped without ``transformer_lens``).
"""

from __future__ import annotations

import pytest
import torch

from lens import FactoredMatrix


def close(a, b, atol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def factors(ldim, m, r, *lead, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, ldim, m, generator=gen).to(dtype), torch.randn(*lead, m, r, generator=gen).to(dtype)


def sorted_eigs(x):
    return sorted(x.to(torch.complex128).tolist(), key=lambda z: (round(z.real, 4), round(z.imag, 4)))


@pytest.mark.parametrize("lmr", [(7, 3, 5), (4, 6, 4), (5, 5, 5)])
@pytest.mark.parametrize("lead", [(), (2,)])
def test_svd_returns_v_with_right_singular_vectors_as_columns(lmr, lead):
    fm = FactoredMatrix(*factors(*lmr, *lead))
    U, S, V = fm.svd()
    k = min(lmr)
    assert U.shape == (*lead, lmr[0], k) and S.shape == (*lead, k) and V.shape == (*lead, lmr[2], k)
    close(U @ torch.diag_embed(S) @ V.mT, fm.AB)  # TL's reconstruction formula: U @ S.diag() @ Vh.T
    close(V.mT @ V, torch.eye(k).expand(*lead, k, k))
    assert fm.Vh is V and fm.V is V  # TL names V ".Vh"; a TL notebook's fm.Vh.T is V^T
    close(fm.U @ torch.diag_embed(fm.S) @ fm.Vh.transpose(-1, -2), fm.AB)


def test_eigenvalues_are_those_of_BA_even_when_mdim_exceeds_ldim():
    A, B = factors(4, 6, 4)  # mdim 6 > ldim 4: BA has 6 eigenvalues, 2 of them zero
    ev = FactoredMatrix(A, B).eigenvalues
    assert ev.shape == (6,) and ev.dtype == torch.complex64
    for got, want in zip(sorted_eigs(ev), sorted_eigs(torch.linalg.eigvals(B @ A))):
        assert abs(got - want) < 1e-4
    assert int((ev.abs() < 1e-4).sum()) == 2
    nonzero = [z for z in sorted_eigs(torch.linalg.eigvals(A @ B))]
    assert all(min(abs(z - e) for e in ev.tolist()) < 1e-3 for z in nonzero)


def test_BA_with_non_square_factors():
    A, B = factors(6, 3, 6)  # factors 6x3 and 3x6, product square
    close(FactoredMatrix(A, B).BA, B @ A)
    with pytest.raises(ValueError, match="square"):
        _ = FactoredMatrix(*factors(6, 3, 4)).BA


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_factors(dtype):
    A, B = factors(8, 3, 8, 2, dtype=dtype)
    fm = FactoredMatrix(A, B)
    exact = A.float() @ B.float()
    assert fm.AB.dtype == fm.BA.dtype == dtype
    U, S, V = fm.svd()  # computed in float32 (no 16-bit SVD in torch.linalg on CPU), returned as the input
    assert U.dtype == S.dtype == V.dtype == dtype
    close((U.float() * S.float()[..., None, :]) @ V.float().mT, exact, atol=0.15)
    close(S.float(), torch.linalg.svdvals(exact)[..., :3], atol=0.1)
    assert fm.norm().dtype == dtype
    close(fm.norm().float(), torch.linalg.norm(exact, dim=(-2, -1)), atol=0.1)
    even = fm.make_even()
    close(even.AB.float(), exact, atol=0.2)
    close(fm.collapse_l().float(), (U.float().mT @ exact), atol=0.15)
    ev = fm.eigenvalues
    assert ev.dtype == torch.complex64 and ev.shape == (2, 3)
    for got, want in zip(ev, torch.linalg.eigvals(B.float() @ A.float())):
        for a, b in zip(sorted_eigs(got), sorted_eigs(want)):
            assert abs(a - b) < 1e-3


# -- TransformerLens as the oracle ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lmr", [(7, 3, 5), (4, 6, 4), (6, 2, 6)])
def test_matches_transformer_lens(lmr):
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install 2.x)")
    A, B = factors(*lmr, 3)
    ours, theirs = FactoredMatrix(A, B), tl.FactoredMatrix(A, B)
    (U, S, V), (U_tl, S_tl, V_tl) = ours.svd(), theirs.svd()
    assert U.shape == U_tl.shape and S.shape == S_tl.shape and V.shape == V_tl.shape
    assert theirs.Vh.shape == ours.Vh.shape
    close(S, S_tl)
    k = min(lmr)  # random factors: all k singular values distinct and nonzero, vectors equal up to sign
    close((U * U_tl).sum(-2).abs(), torch.ones(3, k), atol=1e-3)
    close((V * V_tl).sum(-2).abs(), torch.ones(3, k), atol=1e-3)
    close(ours.norm(), theirs.norm())
    close(ours.make_even().AB, theirs.make_even().AB)
    close(ours.collapse_r().abs(), theirs.collapse_r().abs(), atol=1e-3)
    close(ours.collapse_l().abs(), theirs.collapse_l().abs(), atol=1e-3)
    if lmr[0] == lmr[2]:
        close(ours.BA, theirs.BA)
        ev, ev_tl = ours.eigenvalues, theirs.eigenvalues
        assert ev.shape == ev_tl.shape and ev.dtype == ev_tl.dtype
        for row, row_tl in zip(ev, ev_tl):
            for a, b in zip(sorted_eigs(row), sorted_eigs(row_tl)):
                assert abs(a - b) < 1e-3


def test_bfloat16_eigenvalues_and_BA_match_transformer_lens():
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens is an optional oracle (install 2.x)")
    A, B = factors(6, 3, 6, dtype=torch.bfloat16)
    ours, theirs = FactoredMatrix(A, B), tl.FactoredMatrix(A, B)
    assert ours.BA.dtype == theirs.BA.dtype == torch.bfloat16
    torch.testing.assert_close(ours.BA, theirs.BA)
    ev, ev_tl = ours.eigenvalues, theirs.eigenvalues  # TL rounds B @ A to bfloat16 first; lens multiplies in float32
    assert ev.dtype == ev_tl.dtype == torch.complex64
    for a, b in zip(sorted_eigs(ev), sorted_eigs(ev_tl)):
        assert abs(a - b) < 0.02 * max(1.0, abs(b))
