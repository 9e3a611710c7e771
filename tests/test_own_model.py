"""Your own model: torchvision / timm architectures behind robx's (features, outputs)
contract, ``--weights`` from a local file (never unpickling code), and ``robx audit`` of a
model robx did not train."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch
import torch.nn as nn
import torchvision

from robx.core.errors import OptionError
from robx.core.models import load_initial_weights
from robx.core.registry import registry
from robx.core.task import ModelInput

RGB = ModelInput((3, 32, 32), 10, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def test_a_torchvision_network_is_the_body_of_a_normalising_classifier(tmp_path):
    model = registry().build_model("torchvision:resnet18", RGB).eval()
    reference = torchvision.models.resnet18(num_classes=1000).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    message = load_initial_weights(model, tmp_path / "r18.pth")
    # 122 tensors in torchvision's file; all but fc.weight / fc.bias land in the body
    assert message.startswith("loaded 120 of the model's 124 tensors") and "2 of the file's" in message
    x = torch.rand(2, 3, 32, 32)
    reference.fc = nn.Identity()
    normalised = (x - torch.tensor(RGB.mean).view(1, 3, 1, 1)) / torch.tensor(RGB.std).view(1, 3, 1, 1)
    features, outputs = model(x)
    assert torch.allclose(features, reference(normalised), atol=1e-5)  # torchvision's own features
    assert features.shape == (2, 512) and outputs.shape == (2, 10)  # resnet18's fc.in_features = 512
    # a network trained on this label set (fc: 10 classes): its fc becomes robx's head, so an
    # audit uses it as it is; the 1000-class file has no head for these classes
    tuned = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
    assert load_initial_weights(model, tmp_path / "tuned.pth", with_head=True).startswith(
        "loaded 122 of the model's 124 tensors")
    assert torch.allclose(model(x)[1], tuned(normalised), atol=1e-5)
    with pytest.raises(OptionError, match="'fc.weight' has shape \\(1000, 512\\), the model's 'head.weight'"):
        load_initial_weights(model, tmp_path / "r18.pth", with_head=True)


def test_one_channel_images_are_repeated_and_bad_names_are_one_line():
    gray = ModelInput((1, 16, 16), 4, (0.5,), (0.25,))
    _, outputs = registry().build_model("torchvision:mobilenet_v3_small", gray)(torch.rand(2, 1, 16, 16))
    assert outputs.shape == (2, 4)
    for name, message in (("torchvision:resnet5000", "unknown torchvision architecture 'resnet5000'"),
                          ("torchvision", "is a family: give --model torchvision:NAME"),
                          ("smallcnn:wide", "model 'smallcnn' takes no argument")):
        with pytest.raises(OptionError, match=message):
            registry().build_model(name, RGB)
    with pytest.raises(OptionError, match="takes 1- or 3-channel images, got 2"):
        registry().build_model("torchvision:resnet18", ModelInput((2, 8, 8), 3, (0.0, 0.0), (1.0, 1.0)))


def test_a_timm_network_is_built_headless_with_its_feature_count(monkeypatch):
    made = {}

    def create_model(name, pretrained, num_classes):
        made.update(name=name, pretrained=pretrained, num_classes=num_classes)
        network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))
        network.num_features = 7
        return network

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    features, outputs = registry().build_model("timm:tiny_vit", RGB)(torch.rand(2, 3, 32, 32))
    assert made == {"name": "tiny_vit", "pretrained": False, "num_classes": 0}  # no download, no head
    assert features.shape == (2, 7) and outputs.shape == (2, 10)


def test_weights_that_would_run_code_or_do_not_fit_are_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"conv.weight": torch.zeros(1), "evil": Payload()}, tmp_path / "evil.pt")
    model = registry().build_model("smallcnn", RGB)
    with pytest.raises(OptionError, match=r"holds objects other than tensors; refused to load it \(.*GLOBAL"):
        load_initial_weights(model, tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"layer.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(OptionError, match="20 of the model's 20 tensors are not in the file"):
        load_initial_weights(model, tmp_path / "other.pt")
    with pytest.raises(OptionError, match="no such file"):
        load_initial_weights(model, tmp_path / "missing.safetensors")


def test_audit_scores_a_model_robx_did_not_train_per_class(robx_here, trained_run, tmp_path):
    """The checkpoint of a robx run, audited as an outside model: the same per-class numbers
    as `robx eval` of that run with the same attack, and the attacked confusion agrees with
    the per-class robust accuracy (its diagonal) and sums to one per class."""
    from safetensors.torch import save_file

    payload = torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in payload["model"].items()}, str(tmp_path / "model.safetensors"))
    arch = json.loads((trained_run / "config.json").read_text())["config"]["model"]
    result = robx_here("audit", tmp_path / "model.safetensors", "--arch", arch, "--dataset", "digits",
                       "--attacks", "pgd", "--steps", "5", "--n-eval", "100", "--out", tmp_path / "audit")
    assert result.returncode == 0, result.stderr
    assert "where the attack sends each class" in result.stdout
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert (tmp_path / "audit" / "per_class.png").stat().st_size > 1000
    (report,) = audit["attacks"].values()
    evaluated = robx_here("eval", trained_run, "--steps", "5", "--n-eval", "100")
    assert evaluated.returncode == 0, evaluated.stderr
    (written,) = trained_run.glob("eval-pgd5-*-n100.json")
    own = json.loads(written.read_text())
    assert report["per_class"] == own["per_class"] and report["summary"] == own["summary"]
    confusion = report["details"]["attacked_confusion"]
    assert all(abs(sum(row) - 1) < 1e-3 for row in confusion)
    assert [row[c] for c, row in enumerate(confusion)] == pytest.approx(report["per_class"]["robust"], abs=1e-4)
    again = robx_here("audit", tmp_path / "model.safetensors", "--arch", arch, "--attacks", "pgd",
                      "--out", tmp_path / "audit")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_model_that_does_not_normalise_its_inputs_is_said_not_silent(monkeypatch, tmp_path, capsys):
    from conftest import tiny_config

    from robx.core.engine import build_run
    from robx.core.models import classifier, normalises
    from robx.core.registry import ModelSpec

    body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    gray = ModelInput((1, 8, 8), 10, (0.3,), (0.2,))
    assert normalises(classifier(gray, body, 8), gray)
    assert not normalises(nn.Sequential(body, nn.Linear(8, 10)), gray)
    assert normalises(nn.Sequential(body), ModelInput((64,), 2, (0.0,), (1.0,)))  # nothing to apply

    class Raw(nn.Module):  # (features, outputs), but straight from the pixels
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8)), nn.Linear(8, 10)

        def forward(self, x):
            features = self.body(x)
            return features, self.head(features)

    import numpy as np

    rng = np.random.default_rng(0)
    images = {f"x_{split}": rng.integers(0, 128, (n, 8, 8), dtype=np.uint8) for split, n in (("train", 40), ("test", 20))}
    np.savez(tmp_path / "dark.npz", **images, y_train=np.arange(40) % 10, y_test=np.arange(20) % 10)
    monkeypatch.setitem(registry().models, "raw", ModelSpec("raw", lambda spec: Raw(), "test"))
    build_run(tiny_config(dataset=f"npz:{tmp_path / 'dark.npz'}", model="raw"), tmp_path / "run")
    assert "model 'raw' has no robx.core.models.Normalize" in capsys.readouterr().err  # mean ~0.25: not trivial
    build_run(tiny_config(dataset=f"npz:{tmp_path / 'dark.npz'}", model="mlp"), tmp_path / "run2")
    assert "Normalize" not in capsys.readouterr().err


def test_audit_standard_accuracy_is_the_models_predictions_counted_by_hand(robx_here, trained_run, tmp_path):
    """Independent of robx's evaluation: the audited model's standard accuracy per class on
    the whole digits test split equals its argmax predictions counted here with torch."""
    from safetensors.torch import save_file

    from robx.core.engine import load_run

    payload = torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in payload["model"].items()}, str(tmp_path / "model.safetensors"))
    arch = json.loads((trained_run / "config.json").read_text())["config"]["model"]
    result = robx_here("audit", tmp_path / "model.safetensors", "--arch", arch, "--dataset", "digits",
                       "--attacks", "pgd", "--steps", "1", "--out", tmp_path / "audit")
    assert result.returncode == 0, result.stderr
    (report,) = json.loads((tmp_path / "audit" / "audit.json").read_text())["attacks"].values()
    run = load_run(trained_run)
    model, test = run.state.model.eval(), run.data.test
    with torch.no_grad():
        predicted = model(run.task.inputs(test.x))[1].argmax(dim=1)
    by_hand = [float((predicted[test.labels == c] == c).double().mean()) for c in range(run.data.num_classes)]
    assert report["per_class"]["standard"] == pytest.approx(by_hand, abs=1e-9)
    assert len(set(by_hand)) > 1  # a model that learnt something: the classes differ


def test_audit_refuses_an_attack_whose_library_is_missing_before_any_work(robx_here, trained_run, tmp_path,
                                                                           monkeypatch):
    """Asked for AutoAttack without its library, the command stops at once, naming the
    install, not after the PGD evaluation; by default it audits with what is installed."""
    import importlib.util

    from safetensors.torch import save_file

    payload = torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in payload["model"].items()}, str(tmp_path / "model.safetensors"))
    arch = json.loads((trained_run / "config.json").read_text())["config"]["model"]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "pyautoattack" else real_find_spec(name, *args))

    def work_started(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr("robx.core.engine.evaluate_run", work_started)
    result = robx_here("audit", tmp_path / "model.safetensors", "--arch", arch, "--attacks", "pgd,autoattack",
                       "--out", tmp_path / "audit")
    assert result.returncode == 2
    assert result.stderr.strip() == ("robx: error: attack 'autoattack' needs pyautoattack, which is not installed: "
                                     "pip install 'robx[autoattack]'")
    assert not (tmp_path / "audit").exists()
    monkeypatch.undo()
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "pyautoattack" else real_find_spec(name, *args))
    default = robx_here("audit", tmp_path / "model.safetensors", "--arch", arch, "--steps", "1", "--n-eval", "50",
                        "--out", tmp_path / "default")
    assert default.returncode == 0, default.stderr
    assert "auditing with pgd only: autoattack needs pip install 'robx[autoattack]'" in default.stdout
    assert [key.split("-")[0] for key in json.loads((tmp_path / "default" / "audit.json").read_text())["attacks"]] \
        == ["pgd1"]


def test_audit_keeps_each_finished_attack_when_a_later_one_fails(robx_here, trained_run, tmp_path, monkeypatch):
    """The first attack's report is in audit.json when the second attack stops the command."""
    from safetensors.torch import save_file

    from robx.core.errors import RobxError

    payload = torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in payload["model"].items()}, str(tmp_path / "model.safetensors"))
    arch = json.loads((trained_run / "config.json").read_text())["config"]["model"]
    import robx.core.engine as engine

    real, calls = engine.evaluate_run, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RobxError("the second attack failed")
        return real(*args, **kwargs)

    monkeypatch.setattr("robx.core.engine.evaluate_run", second_fails)
    result = robx_here("audit", tmp_path / "model.safetensors", "--arch", arch, "--attacks", "pgd,cw", "--steps", "1",
                       "--n-eval", "50", "--out", tmp_path / "audit")
    assert result.returncode == 2 and "the second attack failed" in result.stderr
    kept = json.loads((tmp_path / "audit" / "audit.json").read_text())["attacks"]
    assert [key.split("-")[0] for key in kept] == ["pgd1"]
