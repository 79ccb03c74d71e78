import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_method import creamfl
from ssl_method.creamfl import (
    CreamFLSettings,
    aggregate_representations,
    client_regulariser,
    distillation_loss,
    inter_modal_loss,
    intra_modal_loss,
    round_traffic,
)

E = math.e


def unit(*v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def naive_ensemble(local, other, temperature=1.0, over="clients", lse=True):
    """Full-matrix reference (C, N, N logits), with switches for the plausible wrong variants."""
    local, other = F.normalize(local, dim=2), F.normalize(other, dim=1)
    logits = torch.einsum("cnd,md->cnm", local, other) / temperature
    positive = torch.diagonal(logits, dim1=1, dim2=2)
    scores = positive - torch.logsumexp(logits, dim=2) if lse else positive
    weights = torch.softmax(scores, dim=0 if over == "clients" else 1)
    return (weights.unsqueeze(2) * local).sum(0), weights, scores


def random_case(c=3, n=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


# --- server: the representation ensemble ---------------------------------------------------------------------


def test_ensemble_matches_hand_computed_scores_weights_and_aggregate():
    other = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    right = other.clone()  # retrieves each sample's partner
    swapped = other.flip(0)  # retrieves the other sample
    out = aggregate_representations([right, swapped], other)
    s_right = 1 - math.log(E + 1)  # <I, T_i> = 1, other logit 0; no temperature
    s_swapped = 0 - math.log(1 + E)
    assert out.scores[:, 0].tolist() == pytest.approx([s_right, s_swapped], abs=1e-6)
    assert out.scores[0, 0].item() == pytest.approx(-0.31326, abs=1e-5)
    w = 1 / (1 + math.exp(s_swapped - s_right))  # = sigmoid(1)
    assert out.weights[:, 0].tolist() == pytest.approx([w, 1 - w], abs=1e-6)
    assert w == pytest.approx(0.731059, abs=1e-6)
    torch.testing.assert_close(out.aggregate, torch.tensor([[w, 1 - w], [1 - w, w]]), rtol=0, atol=1e-6)
    # with a temperature of 0.5 (a plausible slip) the weight would be sigmoid(2) = 0.881
    assert abs(out.weights[0, 0].item() - 1 / (1 + math.exp(-2))) > 0.1


def test_log_sum_exp_term_decides_which_client_wins():
    """Client B is closer to sample 0's partner than A is, but equally close to sample 1's: A retrieves better."""
    other = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[math.cos(math.radians(40)), -math.sin(math.radians(40))], [0.0, 1.0]])
    b = torch.tensor([[math.cos(math.radians(30)), math.sin(math.radians(30))], [0.0, 1.0]])
    out = aggregate_representations(torch.stack([a, b]), other)
    s_a = -math.log(1 + math.exp(-math.sin(math.radians(40)) - math.cos(math.radians(40))))
    s_b = -math.log(1 + math.exp(math.sin(math.radians(30)) - math.cos(math.radians(30))))
    assert out.scores[:, 0].tolist() == pytest.approx([s_a, s_b], abs=1e-6)
    assert out.weights[0, 0].item() == pytest.approx(1 / (1 + math.exp(s_b - s_a)), abs=1e-6)
    assert out.weights[0, 0].item() == pytest.approx(0.5765, abs=1e-3)
    # without the log-sum-exp term B (dot 0.866 > 0.766) would get the larger weight
    _, wrong, _ = naive_ensemble(torch.stack([a, b]), other, lse=False)
    assert wrong[0, 0] < 0.5 < out.weights[0, 0]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 6, 7, 8, 100])
def test_chunked_ensemble_equals_full_matrix_reference(chunk_size):
    local, other = random_case()
    out = aggregate_representations(local, other, chunk_size=chunk_size)
    aggregate, weights, scores = naive_ensemble(local, other)
    assert out.scores.dtype == torch.float64
    torch.testing.assert_close(out.scores, scores, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.weights, weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.aggregate, aggregate, rtol=0, atol=1e-12)


def test_plausible_wrong_formulas_give_other_weights():
    local, other = random_case(seed=1)
    got = aggregate_representations(local, other, chunk_size=2).weights
    for wrong in (dict(temperature=0.5), dict(temperature=0.07), dict(over="samples"), dict(lse=False)):
        _, weights, _ = naive_ensemble(local, other, **wrong)
        assert (got - weights).abs().max() > 1e-3, wrong
    assert torch.allclose(got.sum(0), torch.ones(7, dtype=torch.float64))  # a softmax over clients


def test_never_forms_a_block_larger_than_chunk_rows(monkeypatch):
    shapes = []
    real = creamfl._logits
    monkeypatch.setattr(creamfl, "_logits", lambda rows, bank: shapes.append(rows.shape[0]) or real(rows, bank))
    local, other = random_case(c=2, n=50, d=4)
    aggregate_representations(local, other, chunk_size=8)
    assert shapes and max(shapes) == 8 and len(shapes) == 2 * 7


def test_equal_clients_share_weight_and_aggregate_is_their_representation():
    rep = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    other = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    out = aggregate_representations([rep, rep.clone(), rep.clone()], other, chunk_size=4)
    torch.testing.assert_close(out.weights, torch.full((3, 6), 1 / 3))
    torch.testing.assert_close(out.aggregate, rep)


def test_better_retriever_gets_most_of_the_weight_but_never_all():
    other = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    good, bad = other.clone(), -other
    out = aggregate_representations(np.stack([good.numpy(), bad.numpy()]), other.numpy())
    # per row: good 1 - log(e + 1/e), bad -1 - log(1/e + e): a gap of 2, the most two unit-norm clients reach here
    assert out.weights[0].tolist() == pytest.approx([1 / (1 + math.exp(-2))] * 2, abs=1e-6)
    assert out.weights[0, 0].item() > 0.88
    # with unit vectors the score gap is below 4 for any N: weight ratio < e^4
    local, other = random_case(c=4, n=30, d=3, seed=5)
    out = aggregate_representations(local * 100, other)
    assert (out.scores.max(0).values - out.scores.min(0).values).max() < 4


def test_ensemble_accepts_numpy_and_normalises_its_inputs():
    local, other = random_case(c=2, n=4, d=3, seed=6)
    scaled = aggregate_representations([(local[0] * 7).numpy(), local[1].numpy()], (other * 3).numpy())
    plain = aggregate_representations(local, other)
    torch.testing.assert_close(scaled.weights, plain.weights)


@pytest.mark.parametrize("bad, match", [
    (lambda c, o: ([], o), "no client"),
    (lambda c, o: ([c[0], c[1][:3]], o), "client_reps\\[1\\]"),
    (lambda c, o: (c, o[:3]), "other_global"),
    (lambda c, o: (c, o[:, :2]), "other_global"),
    (lambda c, o: (c[0], o), "\\(C, N, d\\)"),
    (lambda c, o: (c.index_put((torch.tensor([0]),), torch.tensor(math.nan, dtype=c.dtype)), o), "NaN"),
    (lambda c, o: (c, o.index_put((torch.tensor([1]),), torch.tensor(math.inf, dtype=o.dtype))), "other_global.*infinite"),
])
def test_ensemble_rejects_bad_input_in_one_line(bad, match):
    local, other = random_case(c=2, n=4, d=3)
    with pytest.raises(ValueError, match=match) as err:
        aggregate_representations(*bad(local, other))
    assert "\n" not in str(err.value)


# --- server: distillation ----------------------------------------------------------------------------------------


def test_distillation_loss_is_mean_squared_error_over_all_elements_times_kd_weight():
    server = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)  # normalised: [0.6, 0.8], [0, 1]
    target = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    loss = distillation_loss(server, target)
    squared = (0.4**2 + 0.8**2) + (0.0 + 0.5**2)  # 1.05 over 4 elements
    assert loss.item() == pytest.approx(0.3 * squared / 4, abs=1e-7)
    assert loss.item() == pytest.approx(0.07875, abs=1e-7)
    assert loss.item() != pytest.approx(0.3 * squared / 2)  # a per-row sum, then mean over rows
    loss.backward()
    assert server.grad is not None and server.grad.abs().sum() > 0
    assert distillation_loss(server, target, kd_weight=1.0).item() == pytest.approx(squared / 4, abs=1e-7)


def test_distillation_loss_rejects_mismatched_target():
    with pytest.raises(ValueError, match="target"):
        distillation_loss(torch.ones(3, 2), torch.ones(2, 2))


# --- client: inter- and intra-modal contrasts --------------------------------------------------------------------


def naive_inter(local, idx, bank, tau):
    return F.cross_entropy(F.normalize(local, dim=1) @ F.normalize(bank, dim=1).t() / tau, idx)


def test_inter_modal_loss_matches_hand_computed_value():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    local = torch.tensor([[2.0, 0.0]])
    got = inter_modal_loss(local, [0], bank).item()
    assert got == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-4)), abs=1e-6)  # logits 2, 0, -2 (tau 0.5)
    assert got == pytest.approx(0.14293, abs=1e-5)
    assert got != pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)), abs=1e-3)  # no temperature
    assert inter_modal_loss(local, [1], bank).item() == pytest.approx(got + 2, abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 9, 10, 50])
def test_chunked_inter_modal_loss_and_gradient_equal_the_full_logits(chunk_size):
    g = torch.Generator().manual_seed(7)
    bank = torch.randn(10, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([3, 0, 9, 3, 5])
    a = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    got = inter_modal_loss(a, idx, bank, tau=0.5, chunk_size=chunk_size)
    ref = naive_inter(b, idx, bank, 0.5)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    got.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_inter_modal_loss_is_stable_for_small_tau_and_gradcheck_passes():
    g = torch.Generator().manual_seed(8)
    bank = torch.randn(6, 3, generator=g, dtype=torch.float64)
    local = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 1, 2, 5])
    tiny = inter_modal_loss(local, idx, bank, tau=1e-3, chunk_size=2)
    assert torch.isfinite(tiny) and tiny.item() == pytest.approx(naive_inter(local, idx, bank, 1e-3).item())
    assert torch.autograd.gradcheck(lambda x: inter_modal_loss(x, idx, bank, tau=0.5, chunk_size=4), (local,))


def test_inter_modal_loss_forms_blocks_of_chunk_rows_of_the_bank(monkeypatch):
    cols = []
    real = creamfl._logits
    monkeypatch.setattr(creamfl, "_logits", lambda rows, bank: cols.append(bank.shape[0]) or real(rows, bank))
    inter_modal_loss(torch.randn(4, 3), [0, 1, 2, 3], torch.randn(20, 3), chunk_size=6)
    assert cols == [6, 6, 6, 2]


def test_intra_modal_loss_matches_hand_computed_values():
    local = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    global_same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    old = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    got = intra_modal_loss(local, global_same, old).item()
    row0 = math.log(1 + math.exp(-2))  # logits [1, 0] / 0.5
    row1 = math.log(2)  # equally close to both
    assert got == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert got == pytest.approx(0.41004, abs=1e-5)
    # the positive is the global representation: swapping positive and negative changes the value
    assert intra_modal_loss(local, old, global_same).item() != pytest.approx(got, abs=1e-3)


def test_intra_modal_loss_equals_reference_on_normalised_vectors():
    g = torch.Generator().manual_seed(9)
    f, gl, old = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    fn, gn, on = (F.normalize(x, dim=1) for x in (f, gl, old))
    logits = torch.stack([(fn * gn).sum(1), (fn * on).sum(1)], 1) / 0.5
    ref = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(intra_modal_loss(f * 3, gl, old * 0.2), ref, rtol=0, atol=1e-12)


def test_gradients_flow_into_the_local_representation_only():
    g = torch.Generator().manual_seed(10)
    local = torch.randn(4, 3, generator=g, requires_grad=True)
    global_same = torch.randn(4, 3, generator=g, requires_grad=True)
    old = torch.randn(4, 3, generator=g, requires_grad=True)
    bank = torch.randn(8, 3, generator=g, requires_grad=True)
    intra = intra_modal_loss(local, global_same, old)
    inter = inter_modal_loss(local, [0, 2, 4, 6], bank, chunk_size=3)
    total = client_regulariser([intra], [inter])
    total.backward()
    assert local.grad is not None and local.grad.abs().sum() > 0
    assert global_same.grad is None and old.grad is None and bank.grad is None


def test_client_regulariser_weights_as_the_authors_trainers():
    intra, inter = torch.tensor(0.4), torch.tensor(2.0)
    assert client_regulariser([intra], [inter]).item() == pytest.approx(0.5 * 2.4)
    # two modalities: one cross-entropy over both intra logits (their mean), the inter terms summed
    two = client_regulariser([torch.tensor(0.4), torch.tensor(0.6)], [torch.tensor(2.0), torch.tensor(3.0)], 0.5)
    assert two.item() == pytest.approx(0.5 * (0.5 + 5.0))
    with pytest.raises(ValueError, match="one intra and one inter"):
        client_regulariser([intra], [])


@pytest.mark.parametrize("call, match", [
    (lambda: inter_modal_loss(torch.ones(2, 3), [0, 5], torch.ones(4, 3)), "indices"),
    (lambda: inter_modal_loss(torch.ones(2, 3), [0.0, 1.0], torch.ones(4, 3)), "indices"),
    (lambda: inter_modal_loss(torch.ones(2, 3), [0], torch.ones(4, 3)), "indices"),
    (lambda: inter_modal_loss(torch.ones(2, 3), [0, 1], torch.ones(4, 2)), "dimension"),
    (lambda: inter_modal_loss(torch.ones(2, 3), [0, 1], torch.ones(4, 3), tau=0.0), "tau"),
    (lambda: inter_modal_loss(torch.ones(2, 3), [0, 1], torch.ones(4, 3), chunk_size=0), "chunk_size"),
    (lambda: inter_modal_loss(torch.tensor([[1.0, float("nan")]]), [0], torch.ones(4, 2)), "local.*NaN"),
    (lambda: intra_modal_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 3)), "old_local"),
    (lambda: intra_modal_loss(torch.ones(2, 3), torch.full((2, 3), float("inf")), torch.ones(2, 3)), "global_same"),
])
def test_client_losses_reject_bad_input_in_one_line(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


# --- settings and traffic ----------------------------------------------------------------------------------------


def test_settings_defaults_are_the_papers():
    s = CreamFLSettings()
    assert (s.tau, s.regulariser_weight, s.kd_weight) == (0.5, 0.5, 0.3)
    assert s.chunk_size >= 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(tau=0.0), "tau"), (dict(tau=-1.0), "tau"), (dict(tau=float("nan")), "tau"), (dict(tau=float("inf")), "tau"),
    (dict(regulariser_weight=-0.1), "regulariser_weight"), (dict(kd_weight=-1e-9), "kd_weight"),
    (dict(kd_weight=float("nan")), "kd_weight"), (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=2.0), "chunk_size"), (dict(chunk_size=True), "chunk_size"),
])
def test_settings_reject_bad_values_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        CreamFLSettings(**kwargs)
    assert "\n" not in str(err.value)


def test_zero_weights_are_allowed():
    assert CreamFLSettings(regulariser_weight=0.0, kd_weight=0.0).kd_weight == 0.0


def test_round_traffic_counts_banks_down_and_held_modalities_up():
    t = round_traffic(n_public=50_000, dim=256, held_modalities=[1, 1, 2])
    assert t.downlink_bytes == 3 * 2 * 50_000 * 256 * 4 == 307_200_000
    assert t.uplink_bytes == 4 * 50_000 * 256 * 4 == 204_800_000
    assert t.total_bytes == 512_000_000
    assert round_traffic(10, 8, [2], bytes_per_value=2) == (2 * 10 * 8 * 2, 2 * 10 * 8 * 2)
    assert round_traffic(10, 8, []) == (0, 0)


@pytest.mark.parametrize("kwargs", [
    dict(n_public=0, dim=8, held_modalities=[1]), dict(n_public=10, dim=8, held_modalities=[3]),
    dict(n_public=10, dim=8, held_modalities=[0]), dict(n_public=10, dim=8.0, held_modalities=[1]),
])
def test_round_traffic_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match="round_traffic"):
        round_traffic(**kwargs)


def test_module_imports_only_torch_numpy_and_the_standard_library():
    tree = ast.parse(Path(creamfl.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"__future__", "collections", "dataclasses", "math", "typing", "numpy", "torch"}
