"""Non-finite losses: the step is skipped and logged, and too many in a row stop the run with a clear message."""
import sys
import warnings
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from test_classification import CBAM_CONFIG, QUICK
from test_data import needs_fashion_mnist
from visattn.cli import main
from visattn.errors import ConfigError
from visattn.tasks.captioning import CaptioningTask
from visattn.tasks.classification import ImageClassifier
from visattn.tasks.detection import DetectionTask
from visattn.tasks.guards import NonFiniteLossError, NonFiniteLossGuard

TINY_RESNET = dict(layers=[1, 1], widths=[8, 16], small_input=False)  # with BatchNorm, whose statistics must survive
TINY_SAT = dict(encoder_kwargs=TINY_RESNET, img_size=32, grid_size=4, embed_dim=16, hidden_dim=16, attn_dim=16)


def _floats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights and floating-point buffers (BatchNorm running statistics), copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


class _AfterEachStep(pl.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states.append(_floats(pl_module.model))


def test_nan_batch_is_skipped_leaving_weights_and_batchnorm_statistics_untouched():
    torch.manual_seed(0)
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=3, model_kwargs=TINY_RESNET, warmup_epochs=0)
    labels = torch.tensor([0, 1, 2, 0])
    nan_batch = (torch.full((4, 3, 28, 28), float("nan")), labels)
    good_batch = (torch.randn(4, 3, 28, 28), labels)
    before, steps = _floats(task.model), _AfterEachStep()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[steps])
    trainer.fit(task, DataLoader([nan_batch, good_batch], batch_size=None))

    after_nan, after_good = steps.states
    for name, value in before.items():
        torch.testing.assert_close(after_nan[name], value, rtol=0, atol=0, msg=f"{name} changed by a skipped step")
    assert any(not torch.equal(after_good[k], after_nan[k]) for k in before)  # the good step did train
    assert all(torch.isfinite(v).all() for v in after_good.values())
    assert trainer.callback_metrics["train/skipped_steps"] == 1 and task.loss_guard.bad_in_a_row == 0


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = (outputs or {}).get("loss")  # a skipped step returned None
        self.losses.append(float("nan") if loss is None else float(loss))


def _one_epoch(task: pl.LightningModule, batches: list) -> tuple[list[float], dict]:
    """Each step's loss (NaN for a skipped step) and the logged metrics of one epoch over ``batches``."""
    seen = _Losses()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[seen])
    trainer.fit(task, DataLoader(batches, batch_size=None))
    return seen.losses, trainer.callback_metrics


def test_the_epochs_training_loss_is_the_sample_mean_of_its_finite_losses():
    """Only each logged step's loss was logged: one batch's value, with nothing for the epoch as a whole."""
    torch.manual_seed(0)
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=3, model_kwargs=TINY_RESNET, warmup_epochs=0, lr=0.0)
    batches = [(torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 0])),
               (torch.full((2, 3, 28, 28), float("nan")), torch.tensor([1, 2])),  # skipped: out of the mean
               (torch.randn(2, 3, 28, 28), torch.tensor([2, 2]))]
    (first, skipped, last), metrics = _one_epoch(task, batches)
    assert skipped != skipped  # NaN: the step was skipped
    assert float(metrics["train/loss_epoch"]) == pytest.approx((4 * first + 2 * last) / 6, rel=1e-5)


def test_an_infinite_training_loss_stays_out_of_the_epochs_training_loss():
    """MeanMetric's nan_strategy drops NaN only: a skipped step's inf loss had made train/loss_epoch inf."""
    torch.manual_seed(0)
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=3, model_kwargs=TINY_RESNET, warmup_epochs=0, lr=0.0)
    factors, cross_entropy = iter([1.0, float("inf"), 1.0]), task.criterion.forward
    task.criterion.forward = lambda logits, targets: cross_entropy(logits, targets) * next(factors)
    batches = [(torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 0])),
               (torch.randn(2, 3, 28, 28), torch.tensor([1, 2])),  # its loss is inf: skipped, out of the mean
               (torch.randn(2, 3, 28, 28), torch.tensor([2, 2]))]
    (first, skipped, last), metrics = _one_epoch(task, batches)
    assert skipped != skipped and metrics["train/skipped_steps"] == 1
    assert float(metrics["train/loss_epoch"]) == pytest.approx((4 * first + 2 * last) / 6, rel=1e-5)


def test_a_training_batch_of_one_image_on_a_1x1_batchnorm_map_is_one_line_not_a_skipped_step():
    """torch's "Expected more than 1 value per channel" is said as the batch size to change; a step that returned
    nothing instead would be skipped by Lightning, the fit training on no such batch and ending well."""
    torch.manual_seed(0)
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=3, model_kwargs=TINY_RESNET, warmup_epochs=0)
    one_image = [(torch.randn(1, 3, 8, 8), torch.tensor([0]))]  # 8x8 reaches TINY_RESNET's last stage as 1x1
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"^a training batch of one image: the model's BatchNorm .* set "
                                          r"data\.init_args\.batch_size to 2 or more$"):
        trainer.fit(task, DataLoader(one_image, batch_size=None))


def test_captioning_step_with_nan_loss_is_skipped():
    torch.manual_seed(0)
    vocab = ["<pad>", "<start>", "<end>", "<unk>", "a", "top"]
    task = CaptioningTask(model_kwargs=TINY_SAT, vocab=vocab, max_bad_steps=2)
    batch = {"images": torch.full((2, 3, 32, 32), float("inf")), "captions": torch.tensor([[1, 4, 5, 2], [1, 5, 2, 0]])}
    before = _floats(task.model)
    assert task.training_step(batch, 0) is None
    for name, value in before.items():
        torch.testing.assert_close(_floats(task.model)[name], value, rtol=0, atol=0)
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        task.training_step(batch, 1)


def test_a_captioner_at_a_precision_that_casts_its_batches_is_one_line_before_training():
    """bf16-true casts the batches too: the scenes' item boxes reached the pointing score in bf16 (a traceback in the
    first validation). Refused in setup, before any step."""
    vocab = ["<pad>", "<start>", "<end>", "<unk>", "a", "top"]
    task = CaptioningTask(model_kwargs=TINY_SAT, vocab=vocab)
    batch = {"images": torch.rand(2, 3, 32, 32), "captions": torch.tensor([[1, 4, 5, 2], [1, 5, 2, 0]])}
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", precision="bf16-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"^trainer\.precision bf16-true: the captioner scores captions and attention "
                                          r"from float32 batches .*; use trainer\.precision bf16-mixed .* or 32-true$"):
        trainer.fit(task, DataLoader([batch], batch_size=None))
    assert trainer.global_step == 0


def test_detection_step_with_nan_loss_is_skipped():
    torch.manual_seed(0)
    task = DetectionTask(model_name="fcos_resnet20_cifar", num_classes=3, max_bad_steps=2,
                         model_kwargs={"backbone_kwargs": {"widths": (8, 16, 32)}, "out_channels": 32})
    images = [torch.full((3, 64, 64), float("nan")), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    before = _floats(task.model)
    assert task.training_step((images, targets), 0) is None
    for name, value in before.items():
        torch.testing.assert_close(_floats(task.model)[name], value, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        task.training_step((images, targets), 1)


def test_max_bad_steps_must_be_positive():
    with pytest.raises(ValueError, match=r"^model\.init_args\.max_bad_steps=0: give a whole number >= 1 \(the "
                                         r"non-finite losses in a row that stop the run\)$"):
        NonFiniteLossGuard(max_bad_steps=0)


@needs_fashion_mnist
def test_run_of_nan_losses_stops_fit_with_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    # A loss gone NaN from the start (a std of 0 did it once; the transforms now refuse that up front).
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, logits, target: logits.sum() * float("nan"))
    code = main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.logger", "false", "--trainer.callbacks", "[]",
                 "--model.init_args.max_bad_steps", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("visattn: error: training stopped at step 2: the loss was nan for 3 steps in a row")
    # NaN before any update: not the learning rate's doing, as the message once said
    assert "before any update (so the learning rate is not the cause)" in err[-1] and "trainer.precision" in err[-1]
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("first_bad_step, cause", [
    (0, "from the first step on, before any update (so the learning rate is not the cause): the model's output or "
        "the data hold NaN or inf values; check trainer.precision (32-true is the safe one) and the data"),
    (7, "(the learning rate may be too high, or the data hold NaN or inf values); lower the learning rate "
        "(model.init_args.lr), set trainer.gradient_clip_val (e.g. 1.0), or check the data"),
], ids=["from_the_first_step", "after_updates"])
def test_the_learning_rate_is_blamed_only_after_an_update_and_by_its_config_key(first_bad_step, cause):
    """The message named `model.lr`, no config key, and blamed the learning rate for a loss NaN before any update."""
    task = SimpleNamespace(global_step=first_bad_step, trainer=SimpleNamespace(strategy=None), log=lambda *a, **k: None)
    guard, nan = NonFiniteLossGuard(max_bad_steps=2), torch.tensor(float("nan"))
    assert guard.check(task, nan) is None
    task.global_step += 1  # a skipped step still counts as a step
    with pytest.raises(NonFiniteLossError) as stopped:
        guard.check(task, nan)
    stopped_at = f"training stopped at step {first_bad_step + 1}: the loss was nan for 2 steps in a row"
    assert str(stopped.value) == f"{stopped_at} {cause}"


def test_a_process_whose_own_loss_was_finite_says_another_process_had_the_bad_one():
    """From a DDP audit: the processes whose loss was finite reported it as the bad one ("the loss was 2.226")."""
    other_was_bad = SimpleNamespace(reduce_boolean_decision=lambda finite, all: False, world_size=1)
    task = SimpleNamespace(global_step=3, trainer=SimpleNamespace(strategy=other_was_bad), log=lambda *a, **k: None)
    with pytest.raises(NonFiniteLossError, match="^training stopped at step 3: the loss was not finite on another "
                                                 "process for 1 steps in a row"):
        NonFiniteLossGuard(max_bad_steps=1).check(task, torch.tensor(2.226))


def test_a_bf16_models_loss_is_computed_in_float32():
    """Under trainer.precision bf16-true the loss came from bf16 logits: val/loss 0.640625 against 0.644870; the
    training loss too."""
    torch.manual_seed(0)
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=3, model_kwargs=TINY_RESNET).eval()
    task.model.to(torch.bfloat16)  # the weights as bf16-true keeps them
    images, labels = torch.randn(8, 3, 28, 28).to(torch.bfloat16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        task._evaluate((images, labels), task.val_metrics, task.val_loss)
        logits = task.model(images).float()
    loss = task.val_loss.compute()
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6)
    trained = task.training_step((images, labels), 0)  # train/loss, from the same bf16 logits
    assert trained.dtype == torch.float32
    assert float(trained) == pytest.approx(float(task.criterion(logits, labels)), rel=1e-6)


def _flops(forward, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("detector_name", ["fcos_resnet20_cifar", "detr_resnet20_cifar"])
def test_lightnings_model_summary_counts_the_flops_of_a_forward_on_an_image_of_the_datas_size(detector_name):
    """Its table read "Total FLOPs: 0" at every fit: no task gave an example input. The example is one image of the
    data's input size, in the weights' dtype (a bf16-true run's), and none under compile (a second compilation)."""
    from lightning.pytorch.utilities.model_summary import summarize

    size = [3, 16, 24]
    preprocessing = {"input_size": size, "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}
    classifier = ImageClassifier("resnet20_cifar", num_classes=2, model_kwargs={"layers": (1, 1, 1)}, ema_decay=0.9,
                                 preprocessing=preprocessing)
    expected = _flops(classifier.model.eval(), torch.zeros(1, *size))
    assert expected > 0 and summarize(classifier).total_flops == expected
    assert classifier.to(torch.bfloat16).example_input_array.dtype == torch.bfloat16
    # DETR's summary was a traceback at every fit (its query embedding expanded under no_grad)
    sizes = {"out_channels": 32} if detector_name.startswith("fcos") else {"hidden_dim": 32, "num_queries": 4}
    detector = DetectionTask(detector_name, num_classes=3, preprocessing={"input_size": size},
                             model_kwargs={"backbone_kwargs": {"layers": [1, 1, 1], "widths": [8, 16, 32]},
                                           "min_size": 16, "max_size": 24, **sizes})
    assert summarize(detector).total_flops == _flops(detector.model.eval(), [torch.zeros(*size)]) > 0
    assert ImageClassifier("resnet20_cifar", model_kwargs={"layers": (1, 1, 1)}, compile=True,
                           preprocessing=preprocessing).example_input_array is None
    given = torch.zeros(2, 3, 8, 8)
    classifier.example_input_array = given
    assert classifier.example_input_array is given


def _frozen_part_task(kind: str) -> tuple[pl.LightningModule, Any]:
    """A task (``captioner``, ``detector``, ``linear probe`` or one keeping a weight average, as the README's
    `vit_fmnist.yaml` probe does) whose train() keeps modules in eval mode by design, with one batch it trains on."""
    if kind.startswith("linear probe"):
        return (ImageClassifier("vit_tiny_patch4_28", num_classes=3, freeze_backbone=True, warmup_epochs=0,
                                ema_decay=0.9 if kind.endswith("average") else None,
                                model_kwargs={"depth": 1, "embed_dim": 24, "num_heads": 2}),
                (torch.rand(2, 3, 28, 28), torch.tensor([0, 1])))
    if kind == "captioner":
        vocab = ["<pad>", "<start>", "<end>", "<unk>", "a", "top"]
        return (CaptioningTask(model_kwargs={**TINY_SAT, "freeze_encoder": True}, vocab=vocab),
                {"images": torch.rand(2, 3, 32, 32), "captions": torch.tensor([[1, 4, 5, 2], [1, 5, 2, 0]])})
    detector = DetectionTask(model_name="fcos_resnet20_cifar", num_classes=3, warmup_epochs=0,
                             model_kwargs={"backbone_kwargs": {"widths": (8, 16, 32)}, "out_channels": 32,
                                           "freeze_backbone_norms": True, "trainable_backbone_layers": 2})
    return detector, ([torch.rand(3, 64, 64)] * 2,
                      [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}] * 2)


@pytest.mark.parametrize("kind", ["captioner", "detector", "linear probe", "linear probe with an average"])
def test_lightning_notes_modules_in_eval_mode_only_beyond_those_a_task_keeps_there(kind):
    """A frozen encoder's or backbone's modules are in eval mode by design: every fit of such a task printed
    Lightning's note that modules were in eval mode at the start of training (43 in the scenes captioner's; 160 in
    the README's linear probe, whose weight average's copy of the frozen backbone was counted too). One left in eval
    mode besides them is still noted."""
    def eval_mode_notes(task, batch) -> list[str]:
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(task, DataLoader([batch], batch_size=None))
        return [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]

    task, batch = _frozen_part_task(kind)
    kept = sum(not module.training for module in task.modules())
    assert kept > 0 and eval_mode_notes(task, batch) == []
    task, batch = _frozen_part_task(kind)
    next(module for module in task.model.modules() if module.training and not list(module.children())).eval()
    assert [note.split(" module(s)")[0] for note in eval_mode_notes(task, batch)] == [f"Found {kept + 1}"]
