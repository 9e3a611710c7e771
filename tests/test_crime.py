"""The crime task's data (MinGRE, issue 16): the shipped grids, the gridding of the raw
events, next-day examples, and one-line errors on bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robx.core.registry import resolved_config
from robx.core.data import data_roots
from robx.core.errors import DataError, DataNotFoundError, OptionError
from robx.plugins.common import GraphData
from robx.plugins.datasets import city_crime as crime
from robx.plugins.datasets.city_crime import CrimeOptions, grid_adjacency, grid_events, load_crime


def shared_crime_folder() -> Path | None:
    for root in data_roots():
        if (root / "crime" / "nyc.npz").exists() and (root / "crime" / "NYC_Crime.zip").exists():
            return root / "crime"
    return None


SHARED = shared_crime_folder()
needs_crime_data = pytest.mark.skipif(SHARED is None, reason="the crime grids and raw events (../shared/data/crime "
                                                            "or $ROBX_DATA/crime) are not on this machine")


@needs_crime_data
@pytest.mark.parametrize("name", ["nyc", "chicago"])
def test_gridding_the_raw_events_reproduces_the_shipped_splits(name):
    where = crime.CITIES[name]
    gridded = grid_events(SHARED / where.archive, where)
    with np.load(SHARED / where.npz) as shipped:
        train, val, test = shipped["train"], shipped["val"], shipped["test"]
    assert gridded.shape == train.shape[:2] + (sum(where.split_days), 4)
    n_train, n_val = train.shape[2], val.shape[2]
    assert np.array_equal(gridded[:, :, :n_train], train)
    assert np.array_equal(gridded[:, :, n_train:n_train + n_val], val)
    assert np.array_equal(gridded[:, :, n_train + n_val:], test)


@needs_crime_data
def test_examples_are_the_previous_days_and_the_next_day_of_every_cell():
    with np.load(SHARED / "nyc.npz") as shipped:
        days = np.concatenate([shipped["train"], shipped["val"], shipped["test"]], axis=2).astype(np.float32)
    data = load_crime("nyc", str(SHARED.parent), CrimeOptions(history=30))
    assert (len(data.train), len(data.val), len(data.test)) == (608 - 30, 30, 92)
    assert data.train.x.shape[1:] == (30, 256, 4) and data.train.y.shape[1:] == (256, 4)
    nodes = days.reshape(256, -1, 4)  # row-major cells
    # the first validation day (day 608): history days 578..607 are the last 30 training days
    assert np.array_equal(data.val.x[0].numpy(), nodes[:, 578:608].transpose(1, 0, 2))
    assert np.array_equal(data.val.y[0].numpy(), nodes[:, 608])
    assert np.array_equal(data.train.y[5].numpy(), nodes[:, 35]) and np.array_equal(data.test.y[-1].numpy(), nodes[:, 729])
    cell = 3 * 16 + 7  # grid row 3, col 7
    assert data.test.x[10, -1, cell, 1].item() == days[3, 7, 638 + 10 - 1, 1]
    assert torch.equal(data.train.labels, (data.train.y > 0).long())
    assert 0.85 < (data.train.labels == 0).float().mean().item() < 0.88  # README: 87 % zeros in NYC
    assert data.class_counts() == [int((data.train.y == 0).sum()), int((data.train.y > 0).sum())]
    # per-category z-score statistics of the training days, by numpy
    training = days[:, :, :608].astype(np.float64).reshape(-1, 4)
    assert data.mean == pytest.approx(training.mean(axis=0).tolist(), rel=1e-9)
    assert data.std == pytest.approx(training.std(axis=0, ddof=1).tolist(), rel=1e-9)
    assert data.target_names == ["BURGLARY", "GRAND LARCENY", "ROBBERY", "FELONY ASSAULT"]


def test_the_grid_graph_joins_each_cell_to_its_eight_neighbours_and_itself():
    adjacency = grid_adjacency(3, 4)
    assert torch.equal(adjacency, adjacency.T)
    degree = adjacency.sum(dim=1).view(3, 4)
    assert degree.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [4, 6, 6, 4]]  # corners, edges, inside
    assert adjacency[0, 5] == 1 and adjacency[0, 2] == 0  # (0,0)-(1,1) diagonal; (0,0)-(0,2) too far


def write_grid(folder: Path, name: str = "nyc.npz", **arrays) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, **arrays)


def test_bad_crime_input_is_one_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setattr(crime, "data_roots", lambda explicit=None: [Path(explicit)])  # not the shared data
    small = dict(train=np.ones((2, 2, 40, 4), np.uint16), val=np.zeros((2, 2, 5, 4), np.uint16),
                 test=np.zeros((2, 2, 6, 4), np.uint16))
    write_grid(root / "crime", **small)
    data = load_crime("nyc", str(root), CrimeOptions(history=39))
    assert (len(data.train), len(data.val), len(data.test)) == (1, 5, 6)
    with pytest.raises(OptionError, match=r"^history must be from 1 to 39 days \(the nyc grid has 40 training days\), got 40$"):
        load_crime("nyc", str(root), CrimeOptions(history=40))
    with pytest.raises(OptionError, match="unknown city 'paris'; available: nyc, chicago"):
        load_crime("paris", str(root), CrimeOptions())

    write_grid(root / "crime", train=small["train"], val=small["val"])
    with pytest.raises(DataError, match="is not a crime grid npz with train, val and test arrays"):
        load_crime("nyc", str(root), CrimeOptions(history=3))
    write_grid(root / "crime", **{**small, "val": np.zeros((3, 2, 5, 4), np.uint16)})
    with pytest.raises(DataError, match=r"must be \(rows, cols, days, 4\) arrays of one grid"):
        load_crime("nyc", str(root), CrimeOptions(history=3))
    write_grid(root / "crime", **{**small, "test": -np.ones((2, 2, 6, 4), np.int32)})
    with pytest.raises(DataError, match="non-negative integers"):
        load_crime("nyc", str(root), CrimeOptions(history=3))
    (root / "crime" / "nyc.npz").write_text("not an archive")
    with pytest.raises(DataError, match="is not a crime grid npz"):
        load_crime("nyc", str(root), CrimeOptions(history=3))

    (root / "crime" / "nyc.npz").unlink()
    with pytest.raises(DataNotFoundError, match="nyc crime data not found; looked in: .*nyc.npz"):
        load_crime("nyc", str(root), CrimeOptions())
    where = crime.CITIES["nyc"]
    with zipfile.ZipFile(root / "crime" / where.archive, "w") as archive:
        archive.writestr(where.member, "Occurrence Date,Day of Week,Offense,Sector,Precinct,Latitude,Longitude\n"
                                       "01/02/2014 10:00:00 AM,Thursday,BURGLARY,A,1,40.7,-73.9\n"
                                       "01/03/2014 10:00:00 AM,Friday,JAYWALKING,A,1,40.7,-73.9\n")
    with pytest.raises(DataError, match=r"line 3 is not a nyc crime event .*JAYWALKING"):
        load_crime("nyc", str(root), CrimeOptions())


def test_raw_events_grid_by_the_documented_rule(tmp_path):
    """Three events by hand: rows from latitude (111/3 per degree), cols from longitude (84/3)."""
    where = crime.CITIES["chicago"]  # its CSV has no header line: the first line is skipped all the same
    path = tmp_path / "events.csv"
    path.write_text("01/01/2016 09:00:00 AM,THEFT,41.60,-87.80\n"
                    "01/01/2016 11:00:00 PM,THEFT,41.60,-87.80\n"
                    "01/03/2016 01:00:00 AM,ASSAULT,41.70,-87.70\n"
                    "01/03/2016 02:00:00 PM,BATTERY,41.65,-87.75\n")
    grid = grid_events(path, where)
    # min lat 41.60, min lon -87.80: (41.70-41.60)*37 = 3.7 -> row 3, (0.10)*28 = 2.8 -> col 2
    assert grid.shape == (4, 3, 3, 4) and grid.sum() == 3
    assert grid[0, 0, 0, 0] == 1  # the second THEFT (the first line counts as the header)
    assert grid[3, 2, 2, 2] == 1  # ASSAULT on day 2
    assert grid[1, 1, 2, 1] == 1  # BATTERY: 0.05*37 = 1.85 -> row 1, 0.05*28 = 1.4 -> col 1


# --------------------------------------------------------------------------- the task and its model


def test_negative_binomial_nll_is_scipys():
    from scipy.stats import nbinom

    from robx.plugins.mingre import nb_variance
    from robx.plugins.tasks.crime import nb_nll

    mu = torch.tensor([0.2, 1.0, 3.5, 10.0, 0.05], dtype=torch.float64)
    alpha = torch.tensor([0.5, 2.0, 1.0, 30.0, 5.0], dtype=torch.float64)
    y = torch.tensor([0, 3, 2, 12, 1])
    expected = [-nbinom.logpmf(k, a, a / (a + m)) for k, m, a in zip(y.tolist(), mu.tolist(), alpha.tolist())]
    assert nb_nll(mu, alpha, y).tolist() == pytest.approx(expected, rel=1e-10)
    assert nb_variance(mu, alpha).tolist() == pytest.approx(
        [nbinom.var(a, a / (a + m)) for m, a in zip(mu.tolist(), alpha.tolist())], rel=1e-10)


def tiny_city(root: Path, seed: int = 0) -> None:
    """A 3 x 3 grid, 40 + 5 + 6 days, counts ~ Poisson with a busy centre (about half zeros)."""
    rng = np.random.default_rng(seed)
    rate = np.full((3, 3, 1, 4), 0.3)
    rate[1, 1] = 3.0
    days = rng.poisson(rate, size=(3, 3, 51, 4)).astype(np.uint16)
    write_grid(root / "crime", train=days[:, :, :40], val=days[:, :, 40:45], test=days[:, :, 45:])


def test_the_crime_task_trains_attacks_and_reports_zero_and_non_zero_errors(tmp_path, monkeypatch):
    import robx.core.engine as engine
    from robx.core.config import TrainConfig

    monkeypatch.setattr(crime, "data_roots", lambda explicit=None: [Path(explicit)])
    tiny_city(tmp_path / "data")
    config = TrainConfig(dataset="nyc-crime", data_root=str(tmp_path / "data"), dataset_options={"history": 7},
                         epochs=3, batch_size=8, eval_steps=5, lr=0.01, optimizer="adam")
    report = engine.train(config, tmp_path / "run")
    assert report["task"] == "crime" and report["model"] == "stgnn" and report["class_names"] == ["zero", "non-zero"]
    run = engine.load_run(tmp_path / "run")
    assert isinstance(run.state.optimizer, torch.optim.Adam)
    test_y = run.data.test.y
    assert report["n_test"] == 6 and report["test_counts"] == [int((test_y == 0).sum()), int((test_y > 0).sum())]
    # the per-group MAE of the run's own predictions, by hand
    with torch.no_grad():
        mu = run.state.model(run.task.inputs(run.data.test.x))[1][..., 0]
    errors = (mu - test_y).abs()
    assert report["per_class"]["standard"] == pytest.approx([errors[test_y == 0].mean().item(),
                                                            errors[test_y > 0].mean().item()], rel=1e-5)
    details = report["details"]["predictors"]
    assert details["model, stpgd"]["nll"] > details["model, clean"]["nll"]  # STPGD ascends the NB NLL
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3 and '"counts": [' in metrics[0]
    # the details: the trivial all-zero predictor's non-zero MAE is the mean non-zero count
    assert details["all-zero"]["mae non-zero"] == pytest.approx(test_y[test_y > 0].mean().item())
    assert details["model, clean"]["mae zero"] == pytest.approx(report["per_class"]["standard"][0], rel=1e-5)
    assert [table["title"][:6] for table in report["details"]["tables"]] == ["errors", "MAE on"]


def test_the_task_is_implied_by_the_dataset_and_checked_against_it():
    from robx.core.config import TrainConfig

    assert resolved_config(TrainConfig(task="crime", dataset="nyc-crime")).task == "crime"
    assert resolved_config(TrainConfig(dataset="chicago-crime")).task == "crime"  # the dataset implies it
    with pytest.raises(OptionError, match=r"^task 'crime' needs a dataset: give --dataset \(chicago-crime, nyc-crime\)$"):
        resolved_config(TrainConfig(task="crime"))
    with pytest.raises(OptionError, match="^dataset 'cifar10' is for task 'classification', not 'crime'$"):
        resolved_config(TrainConfig(task="crime", dataset="cifar10"))
    with pytest.raises(OptionError, match="^unknown task 'traffic'; available: classification, crime, "
                                          "crowd-classification, regression$"):
        resolved_config(TrainConfig(task="traffic", dataset="nyc-crime"))


@needs_crime_data
@pytest.mark.parametrize("args, message", [
    (["--dataset", "paris-crime"], "unknown dataset 'paris-crime'; available: "),
    (["--dataset", "nyc-crime", "--set", "dataset.history=700"],
     "history must be from 1 to 607 days (the nyc grid has 608 training days), got 700"),
    (["--dataset", "nyc-crime", "--set", "dataset.days=3"], "unknown option 'dataset.days'; valid: dataset.history"),
    (["--dataset", "digits", "--set", "dataset.history=3"], "dataset 'digits' takes no options (got history)"),
    (["--task", "crime", "--dataset", "cifar10"], "dataset 'cifar10' is for task 'classification', not 'crime'"),
    (["--dataset", "nyc-crime", "--optimizer", "rmsprop"], "--optimizer must be one of sgd, adam, got 'rmsprop'"),
])
def test_bad_crime_runs_are_one_line_and_exit_2(robx_here, tmp_path, args, message):
    result = robx_here("train", *args, "--out", tmp_path / "run")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_event_detection_by_hand():
    from robx.plugins.tasks.crime import event_detection

    # one day, one category, 5 cells; events at cells 1 and 4; ranking by prediction: 4, 2, 1, 0, 3
    counts = torch.tensor([0, 2, 0, 0, 1.0]).view(1, 5, 1)
    predicted = torch.tensor([0.2, 0.5, 0.9, 0.1, 1.4]).view(1, 5, 1)
    # K = 2: detections {4, 2}: one hit of two events -> recall 1/2; AP = (1/1) / min(2, 2) = 0.5
    assert event_detection(predicted, counts, 2) == pytest.approx((0.5, 0.5))
    # K = 3: hits at ranks 1 and 3 -> recall 1; AP = (1/1 + 2/3) / 2 = 5/6
    assert event_detection(predicted, counts, 3) == pytest.approx((1.0, 5 / 6))
    # a second (day, category) without events is left out of both means
    two = torch.cat([counts, torch.zeros(1, 5, 1)], dim=2), torch.cat([predicted, torch.rand(1, 5, 1)], dim=2)
    assert event_detection(two[1], two[0], 3) == pytest.approx((1.0, 5 / 6))


def test_error_summary_and_trivial_predictors_by_hand():
    from robx.core.data import Split, TaskData
    from robx.plugins.tasks.crime import Crime, error_summary

    counts = torch.tensor([[[0.0], [3.0]], [[1.0], [0.0]]])  # 2 days, 2 cells, 1 category
    predicted = torch.tensor([[[1.0], [1.0]], [[1.0], [0.5]]])
    summary = error_summary(predicted, counts)
    # errors: zero targets 1 and 0.5; non-zero 2 and 0
    assert summary["mae zero"] == pytest.approx(0.75) and summary["mae non-zero"] == pytest.approx(1.0)
    assert summary["mae disparity"] == pytest.approx(0.25) and summary["mae overall"] == pytest.approx(0.875)
    assert summary["rmse zero"] == pytest.approx((1.25 / 2) ** 0.5) and summary["rmse non-zero"] == pytest.approx(2 ** 0.5)

    history = torch.tensor([[[[5.0], [0.0]], [[2.0], [4.0]]], [[[2.0], [4.0]], [[7.0], [1.0]]]])  # 2 days of 2-day history
    train = Split(history, torch.tensor([[[1.0], [2.0]], [[3.0], [6.0]]]), torch.zeros(2, 2, 1, dtype=torch.long))
    test = Split(history, counts, (counts > 0).long())
    task = Crime(TaskData("toy", ["zero", "non-zero"], train, test, (0.0,), (1.0,)))
    trivial = task.trivial_predictions(test)
    assert trivial["all-zero"].abs().sum() == 0
    assert trivial["historical mean"][0].flatten().tolist() == [2.0, 4.0]  # (1+3)/2, (2+6)/2 per cell
    assert trivial["last value"].flatten().tolist() == [2.0, 4.0, 7.0, 1.0]  # the last history day


# --------------------------------------------------------------------------- STPGD


def toy_crime_task(nodes_side: int = 3, days: int = 12, history: int = 4, seed: int = 0):
    from robx.core.data import Split
    from robx.plugins.models.stgnn import STGNN
    from robx.plugins.tasks.crime import Crime

    generator = torch.Generator().manual_seed(seed)
    nodes = nodes_side * nodes_side
    x = torch.poisson(torch.full((days, history, nodes, 2), 0.7), generator=generator)
    y = torch.poisson(torch.full((days, nodes, 2), 0.7), generator=generator)
    split = Split(x, y, (y > 0).long())
    task = Crime(GraphData("toy", ["zero", "non-zero"], split, split, (0.7, 0.7), (0.8, 0.8),
                           graph=grid_adjacency(nodes_side, nodes_side)))
    torch.manual_seed(seed)
    model = STGNN(grid_adjacency(nodes_side, nodes_side), 2, 2, hidden=8).eval()
    return task, model, task.inputs(x), y


def test_topk_victims_of_the_crime_task_are_stpgds_most_salient_nodes():
    from types import SimpleNamespace

    from robx.core.state import Step
    from robx.plugins.tasks.crime import nb_nll
    from robx.plugins.topk import TopK

    from robx.core.attacks import Attack

    task, model, x, y = toy_crime_task(nodes_side=4)
    state = SimpleNamespace(model=model, task=task)
    attack = Attack(model=model, x=x, y=y, eps=torch.full((len(x),), 0.5), alpha=torch.full((len(x),), 0.1), steps=2,
                    norm="linf", bounds=task.input_bounds, task_loss=task.attack_loss)
    mask = TopK(TopK.Options(fraction=0.25)).select_victims(step=Step(x=x, y=y, labels=(y > 0).long(), attack=attack),
                                                            state=state)
    assert mask.shape == (1, 1, 16, 1) and mask.sum() == 4
    # Liu et al.'s node saliency by its definition, with autograd: || ReLU(mean over the batch of dL/dX_n) ||_2
    leaf = x.clone().requires_grad_(True)
    _, outputs = model(leaf)
    nb_nll(outputs[..., 0], outputs[..., 1], y).sum().backward()
    saliency = leaf.grad.mean(dim=0).clamp(min=0).pow(2).sum(dim=(0, 2)).sqrt()
    assert set(mask.flatten().nonzero().flatten().tolist()) == set(saliency.topk(4).indices.tolist())


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.05, 1.0), victims=st.sampled_from([0.1, 0.25, 0.5]),
       steps=st.integers(1, 4))
def test_stpgd_moves_only_victim_nodes_and_stays_in_the_ball(seed, eps, victims, steps):
    from robx.core.registry import registry

    task, model, x, y = toy_crime_task(nodes_side=4, seed=seed)
    torch.manual_seed(seed)
    stpgd = registry().plan_attack(task, "stpgd", eps=eps, alpha=eps / 4, steps=steps, options={"victims": victims})
    x_adv = stpgd(model, task, x, y, y)
    delta = x_adv - x
    assert delta.abs().max() <= eps + 1e-6
    moved_nodes = (delta != 0).any(dim=0).any(dim=0).any(dim=1)  # any day, step or category of the node
    assert 0 < moved_nodes.sum() <= max(1, round(victims * 16))
    assert torch.equal(x_adv[:, :, ~moved_nodes], x[:, :, ~moved_nodes])


# --------------------------------------------------------------------------- issue 30: model and report


def test_stgnn_reads_the_whole_history_and_the_last_week_model_only_seven_days():
    """Two kernel-3 stride-2 convolutions: the last output's receptive field is 1 + 2 + 4 = 7
    steps. ``stgnn`` pools over every step (and the input's means), so day 0 moves it."""
    from robx.plugins.models.stgnn import STGNN

    torch.manual_seed(0)
    x = torch.randn(2, 30, 9, 2)
    early = x.clone()
    early[:, :23] += 5.0  # every day but the last 7
    for whole_history, moves in ((False, False), (True, True)):
        model = STGNN(grid_adjacency(3, 3), 2, 2, hidden=8, whole_history=whole_history).eval()
        changed = not torch.allclose(model(x)[1], model(early)[1])
        assert changed == moves
    model = STGNN(grid_adjacency(3, 3), 2, 2, hidden=8).eval()
    only_first = x.clone()
    only_first[:, 0] += 5.0
    assert not torch.allclose(model(x)[1], model(only_first)[1])


def test_stgnn_starts_at_each_cells_base_rate():
    from robx.plugins.models.stgnn import STGNN

    base_rate = torch.tensor([[0.0, 0.5], [2.0, 7.25], [0.01, 1.0], [3.0, 0.2]])
    model = STGNN(grid_adjacency(2, 2), 2, 2, hidden=8, base_rate=base_rate)
    mu = model(torch.randn(3, 10, 4, 2))[1][..., 0]
    # softplus(softplus^-1(m)) = m; a mean of 0 starts at the 1e-3 floor (+ the 1e-6 of every mu)
    assert torch.allclose(mu, base_rate.clamp(min=1e-3).expand(3, 4, 2) + 1e-6, atol=1e-5)
    with pytest.raises(OptionError, match=r"the base rate is \(3, 2\), not \(nodes, outputs\) = \(4, 2\)"):
        STGNN(grid_adjacency(2, 2), 2, 2, base_rate=base_rate[:3])


def test_moment_dispersion_and_region_disparity_by_hand():
    from robx.plugins.tasks.crime import moment_dispersion, region_disparity

    counts = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])  # 3 days, 2 positions
    # position 0: mean 2, sample variance 4 -> alpha = 2^2 / (4 - 2) = 2; position 1: variance 0 <= mean -> 1e3
    assert moment_dispersion(counts).tolist() == pytest.approx([2.0, 1e3])

    # one day, one category, 4 cells; cells 0, 1 are event regions. Events at 0 (region) and 2, 3 (elsewhere);
    # ranking 0, 2, 1, 3; K = 2 -> inside: recall 1, AP 1; outside: hit 2 at rank 2 -> recall 1/2, AP (1/2) / 2
    counts = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 4, 1)
    predicted = torch.tensor([0.9, 0.5, 0.7, 0.1]).view(1, 4, 1)
    regions = torch.tensor([True, True, False, False]).view(4, 1)
    assert region_disparity(predicted, counts, regions, 2) == pytest.approx((1 - 0.5, 1 - 0.25))


def test_long_window_and_weekday_predictors_read_the_days_before_each_target(tmp_path, monkeypatch):
    from robx.plugins.tasks.crime import Crime

    root = tmp_path / "data"
    monkeypatch.setattr(crime, "data_roots", lambda explicit=None: [Path(explicit)])
    rng = np.random.default_rng(0)
    grid = rng.poisson(1.0, size=(2, 2, 140, 4)).astype(np.uint16)
    write_grid(root / "crime", train=grid[:, :, :100], val=grid[:, :, 100:110], test=grid[:, :, 110:])
    data = load_crime("nyc", str(root), CrimeOptions(history=30))
    task = Crime(data)
    days = grid.reshape(4, 140, 4).transpose(1, 0, 2).astype(np.float64)  # (days, nodes, categories)
    trivial = task.trivial_predictions(data.test)
    for i, day in enumerate(range(110, 140)):
        assert trivial["90-day mean"][i].numpy() == pytest.approx(days[day - 90:day].mean(axis=0))
        assert trivial["same weekday"][i].numpy() == pytest.approx(days[[day - 7, day - 14, day - 21, day - 28]].mean(axis=0))
    val = task.trivial_predictions(data.val)  # the first validation day: 90 days back reach day 10
    assert val["90-day mean"][0].numpy() == pytest.approx(days[10:100].mean(axis=0))
    early = task.trivial_predictions(data.train)["90-day mean"][0]  # day 30: only 30 days before it
    assert early.numpy() == pytest.approx(days[:30].mean(axis=0))
    assert task.model_input().target_mean.numpy() == pytest.approx(days[30:100].mean(axis=0))


def test_a_task_declares_per_target_labels_and_checks_its_datasets_labels():
    from robx.core.errors import RobxError
    from robx.plugins.tasks.classification import Classification
    from robx.plugins.tasks.crime import Crime as CrimeTask

    assert CrimeTask.labels_per_target and not Classification.labels_per_target
    CrimeTask.check_labels(torch.zeros(5, 9, 4, dtype=torch.long), "grid")
    Classification.check_labels(torch.zeros(5, dtype=torch.long), "images")
    with pytest.raises(RobxError, match=r"dataset 'grid' gives labels of shape \(5, 9, 4\), but its task "
                                        r"'classification' labels every example"):
        Classification.check_labels(torch.zeros(5, 9, 4, dtype=torch.long), "grid")
    with pytest.raises(RobxError, match="labels every target"):
        CrimeTask.check_labels(torch.zeros(5, dtype=torch.long), "images")


def test_the_task_declares_its_attacks_and_their_options():
    """The crime task names its attacks; STPGD carries its victims option (default 0.1, range
    checked by the attack); an option an attack does not take is one line; names and file
    tags as before."""
    from robx.core.errors import OptionError
    from robx.core.registry import registry

    task, _, _, _ = toy_crime_task(nodes_side=4, seed=0)
    assert registry().attacks_for(task) == ["pgd", "stpgd"]
    stpgd = registry().plan_attack(task, "stpgd", eps=0.5, alpha=0.125, steps=20)
    assert stpgd.options.victims == 0.1
    assert stpgd.tag == "stpgd20-victims0.1-linf-eps0.5"
    assert stpgd.describe() == "STPGD-20 victims 0.1 linf eps=0.5 alpha=0.125"
    with pytest.raises(OptionError, match=r"attack 'pgd' takes no options \(got victims\)"):
        registry().plan_attack(task, "pgd", eps=0.5, alpha=0.1, steps=20, options={"victims": 0.2})
    with pytest.raises(OptionError, match=r"victims must be in \(0, 1\], got 1.5"):
        registry().plan_attack(task, "stpgd", eps=0.5, alpha=0.1, steps=20, options={"victims": 1.5})
    with pytest.raises(OptionError, match="unknown attack 'autoattack' for task 'crime'; available: pgd, stpgd"):
        registry().plan_attack(task, "autoattack", eps=0.5, alpha=0.1, steps=20)
