"""MinGRE (plugins/mingre.py): reweighted victims, the uncertainty-guided contrastive loss,
the two-stage step, and crime-cpu's methods on a tiny city."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import robx.plugins.datasets.city_crime as crime
from test_crime import tiny_city
from test_plugins import protocol_methods


@pytest.fixture
def tiny_city_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(crime, "data_roots", lambda explicit=None: [Path(explicit)])
    tiny_city(tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize(("val_fraction", "method"), list(protocol_methods("crime")))
def test_every_crime_protocol_method_trains_on_a_tiny_city(tmp_path, tiny_city_root, val_fraction, method):
    from robx.core.config import TrainConfig
    from robx.core.engine import train

    config = TrainConfig.from_dict({"dataset": "nyc-crime", "data_root": str(tiny_city_root), "epochs": 2,
                                    "batch_size": 8, "steps": 2, "eval_steps": 2, "dataset_options": {"history": 7},
                                    **method})
    report = train(config, tmp_path / "run")
    assert all(math.isfinite(v) and v >= 0 for kind in ("standard", "robust") for v in report["per_class"][kind])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(line["loss"]) for line in metrics)
    reweights = "mingre" in method["plugins"] and method.get("plugin_options", {}).get("mingre", {}).get("reweight", True)
    for line in metrics:  # MinGRE's victim diagnostics are shares: in [0, 1], every epoch
        assert ("diagnostics" in line) == reweights
        assert all(0.0 <= value <= 1.0 + 1e-6 for value in line.get("diagnostics", {}).values())


# --- the uncertainty-guided contrastive loss ------------------------------------------------

def test_ucl_is_the_variance_weighted_supervised_contrastive_loss_of_a_loop():
    from robx.plugins.mingre import uncertainty_contrastive_loss

    torch.manual_seed(0)
    batch, nodes, hidden, channels, temperature = 2, 5, 4, 3, 0.5
    features = torch.randn(batch, nodes, hidden, dtype=torch.float64)
    mu = torch.rand(batch, nodes, channels, dtype=torch.float64) * 3 + 0.1
    dispersion = torch.rand(batch, nodes, channels, dtype=torch.float64) * 2 + 0.2
    is_minority = torch.rand(batch, nodes, channels) < 0.25
    loss = uncertainty_contrastive_loss(features, torch.stack([mu, dispersion], dim=-1), is_minority, temperature,
                                        anchors=100)
    # docs/methods.md (mingre) by a loop: anchors (segment, node), class = any non-zero target,
    # weight = sum_c (mu + mu^2 / alpha) over the mean of those, SupCon per anchor (Khosla et al. eq. 2)
    anchors = [(b, n) for b in range(batch) for n in range(nodes)]
    unit = {a: features[a] / features[a].norm() for a in anchors}
    group = {a: bool(is_minority[a].any()) for a in anchors}
    variance = {a: sum(float(mu[a][c] + mu[a][c] ** 2 / dispersion[a][c]) for c in range(channels)) for a in anchors}
    mean_variance = sum(variance.values()) / len(anchors)
    weighted_sum = weight_total = 0.0
    for i in anchors:
        others = [a for a in anchors if a != i]
        denominator = sum(math.exp(float(unit[i] @ unit[a]) / temperature) for a in others)
        positives = [p for p in others if group[p] == group[i]]
        term = (-sum(math.log(math.exp(float(unit[i] @ unit[p]) / temperature) / denominator) for p in positives)
                / len(positives)) if positives else 0.0
        weight = variance[i] / mean_variance
        weighted_sum += weight * term
        weight_total += weight
    assert float(loss) == pytest.approx(weighted_sum / weight_total, rel=1e-5)


def test_ucl_weights_its_anchors_by_their_uncertainty(monkeypatch):
    """The anchor weights handed to the supcon kernel are the NB variances over their mean."""
    import robx.plugins.mingre as mingre
    from robx.plugins.mingre import uncertainty_contrastive_loss

    torch.manual_seed(1)
    features = torch.randn(1, 6, 3, requires_grad=True)
    is_minority = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool).view(1, 6, 1)
    mu = torch.tensor([0.5] * 6).view(1, 6, 1)
    certain = torch.stack([mu, torch.full_like(mu, 100.0)], dim=-1)  # Var ~ mu
    uncertain = certain.clone()
    uncertain[0, 0, 0, 1] = 0.01  # node 0: Var = 0.5 + 25
    for outputs, expected_share in ((certain, 1 / 6), (uncertain, 25.5 / (25.5 + 5 * 0.5025))):
        weights_seen = {}

        def spy(z, labels, temperature, anchor_weights=None):
            weights_seen["w"] = anchor_weights
            return z.sum() * 0

        monkeypatch.setattr(mingre, "supcon", spy)
        uncertainty_contrastive_loss(features, outputs, is_minority, 0.1, anchors=100)
        weights = weights_seen["w"]
        assert float(weights.mean()) == pytest.approx(1.0)
        assert float(weights[0] / weights.sum()) == pytest.approx(expected_share, rel=1e-3)


# --- reweighted victims ---------------------------------------------------------------------

def test_uniform_attention_and_unit_weights_rank_as_stpgd():
    """A = 1 (constant encoder logits, uniform time attention) and w = 1: MinGRE's node scores
    are STPGD's ||ReLU(batch-mean dL/dX_n)||_2 up to one constant."""
    from robx.plugins.mingre import attention, node_saliency, reweighted_gradients

    torch.manual_seed(2)
    gradients = torch.randn(2, 3, 4, 6, 2)  # (classes, B, T, N, C)
    uniform = attention(torch.zeros(3, 6, 2), torch.full((3, 4, 6), 0.25))
    assert torch.allclose(uniform, torch.full((3, 4, 6), 0.5))  # sigmoid(0) a_s(b) = 1, T a_t = 1
    scores = node_saliency(reweighted_gradients(gradients, torch.ones(2), uniform).sum(dim=0))
    plain = gradients.sum(dim=0).mean(dim=0).clamp(min=0).pow(2).sum(dim=(0, 2)).sqrt()  # by the definition
    assert torch.allclose(scores[0], 0.5 * plain, atol=1e-6)


class LastDay(torch.nn.Module):
    """mu = softplus(bias_n + 0.1 x_last), alpha = 1: each node's gradient set by its bias."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(bias)

    def forward(self, x: torch.Tensor):
        last = x[:, -1]
        mu = torch.nn.functional.softplus(self.bias[None, :, None] + 0.1 * last)
        return last, torch.stack([mu, torch.ones_like(mu)], dim=-1)


def test_reweighted_victims_move_toward_the_minority_nodes_plain_topk_leaves_out():
    """The constructed case of the paper's claim: zero targets over-predicted (mu ~ 2: large
    NB gradients) on nodes 0-7, events with small gradients (mu ~ 1.3 for y = 1) on nodes
    8-15, whose history is busier. Plain top-K (STPGD) picks only zero nodes; after the
    encoder learns where the events are, MinGRE picks event nodes, and its diagnostics say so."""
    from types import SimpleNamespace

    from robx.core.state import Step
    from robx.plugins.mingre import MinGRE
    from test_crime import toy_crime_task

    task, _, _, _ = toy_crime_task(nodes_side=4, days=8, history=4)
    busy = torch.arange(16) >= 8
    generator = torch.Generator().manual_seed(0)
    x = torch.where(busy, 1.0, -1.0).view(1, 1, 16, 1).expand(8, 4, 16, 2) + 0.1 * torch.randn(8, 4, 16, 2,
                                                                                                generator=generator)
    y = busy.view(1, 16, 1).expand(8, 16, 2).float()
    labels = y.long()
    inverse_softplus = lambda m: math.log(math.expm1(m))  # noqa: E731
    model = LastDay(torch.where(busy, inverse_softplus(1.3) - 0.1, inverse_softplus(2.0) + 0.1))
    logged: dict[str, list[float]] = {}
    state = SimpleNamespace(
        model=model, task=task, num_classes=2, class_counts=torch.tensor([3000, 1000]), device=torch.device("cpu"),
        config=SimpleNamespace(dataset="toy", seed=0),
        log_diagnostic=lambda name, value: logged.setdefault(name, []).append(float(value)))
    torch.manual_seed(0)
    plugin = MinGRE(MinGRE.Options(fraction=0.25, saliency_steps=1, encoder_lr=1e-2))
    plugin.check_run(state)
    plugin.train_start(state)
    from robx.core.attacks import Attack

    attack = Attack(model=model, x=x, y=y, eps=torch.full((8,), 0.5), alpha=torch.full((8,), 0.1), steps=2,
                    norm="linf", bounds=task.input_bounds, task_loss=task.attack_loss)
    step = Step(x=x, y=y, labels=labels, attack=attack)
    first = plugin.select_victims(step=step, state=state).flatten()
    assert logged["mingre.victim_minority_share_plain"][0] == 0.0  # STPGD: four zero nodes
    for _ in range(60):  # the encoder learns where the events are
        chosen = plugin.select_victims(step=step, state=state).flatten()
    assert chosen.sum() == 4 and bool(busy[chosen].all()), chosen
    assert logged["mingre.victim_minority_share"][-1] == 1.0
    assert logged["mingre.victim_minority_share_plain"][-1] == 0.0 and logged["mingre.victim_overlap"][-1] == 0.0
    assert logged["mingre.victim_minority_mass"][-1] > 2 * logged["mingre.victim_minority_mass_plain"][-1]
    assert first.sum() == 4


def test_a_resumed_mingre_run_continues_its_encoder(tmp_path, tiny_city_root, monkeypatch):
    """The encoder and its optimiser live in the checkpoint (the plugin's state_dict): killed after
    one epoch and resumed, the run's losses and victims are the straight run's."""
    from conftest import train_killed_and_resumed

    from robx.core.config import TrainConfig

    config = TrainConfig(dataset="nyc-crime", data_root=str(tiny_city_root), dataset_options={"history": 7}, epochs=2,
                         batch_size=8, steps=2, eval_steps=2, plugins=["mingre"])
    straight, resumed = train_killed_and_resumed(config, tmp_path, monkeypatch, kill_in_epoch=1)
    lines = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, resumed)]
    for key in ("loss", "loss_terms", "diagnostics"):
        assert lines[0][1][key] == pytest.approx(lines[1][1][key], rel=1e-6), key


def test_mingre_on_a_task_without_graph_signals_is_one_line_and_exit_2(robx_here, tmp_path):
    result = robx_here("train", "--plugins", "mingre", "--epochs", "1", "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "robx: error: mingre needs graph signals (time, nodes, channels) labelled per node and channel, with node "
        "victims (the crime task); dataset 'digits' has examples (1, 8, 8) labelled ()"]
    assert not (tmp_path / "run").exists()  # checked before anything is written
