"""The tasks' accelerator switches (compile, sdpa_backend, bf16-mixed), checked on CPU through what they wire up."""
import functools
from typing import Any, Callable

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, TensorDataset

from visattn.errors import ConfigError
from visattn.tasks.captioning import CaptioningTask
from visattn.tasks.classification import ImageClassifier
from visattn.tasks.detection import DetectionTask

TINY_VIT = dict(model_name="vit_tiny_patch4_28", num_classes=3, model_kwargs={"depth": 1})
TINY_CAPTIONER = dict(vocab=["<pad>", "<start>", "<end>", "<unk>", "a", "red", "top", "bag", "and"],
                      model_kwargs=dict(encoder_kwargs=dict(layers=[1, 1], widths=[8, 16], small_input=False),
                                        img_size=32, grid_size=4, embed_dim=16, hidden_dim=16, attn_dim=16,
                                        dropout=0.0))  # inductor draws dropout masks otherwise than eager
TINY_FCOS = dict(model_name="fcos_resnet20_cifar", num_classes=3,
                 model_kwargs={"backbone_kwargs": {"layers": [1, 1, 1], "widths": [8, 16, 32]}, "out_channels": 32,
                               "min_size": 48, "max_size": 64, "score_thresh": 0.0})


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Record, for every SDPA call, which kernels were allowed and the dtype of the queries."""
    calls = []
    original = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        allowed = {name for name, on in (("flash", torch.backends.cuda.flash_sdp_enabled()),
                                         ("efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                                         ("math", torch.backends.cuda.math_sdp_enabled())) if on}
        calls.append((allowed, q.dtype))
        return original(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


@pytest.fixture
def compiled(monkeypatch):
    """torch.compile replaced by a recorder that returns the function unchanged."""
    seen = []

    def fake_compile(fn, *args, **kwargs):
        seen.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    return seen


@pytest.fixture
def traced_compile(monkeypatch):
    """torch.compile as dynamo and AOTAutograd trace it (graphs, graph breaks, the joint forward and backward), run
    without inductor's code generation, which takes tens of seconds a graph on the CPU."""
    real_compile = torch.compile

    def aot_eager(fn, *args, **kwargs):
        return real_compile(fn, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", aot_eager)
    yield
    torch._dynamo.reset()


def _fit(task: ImageClassifier, precision: str = "32-true") -> None:
    data = TensorDataset(torch.randn(8, 3, 28, 28), torch.randint(0, 3, (8,)))
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, precision=precision, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))


def test_unknown_sdpa_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="sdpa_backend='fast'.*flash, efficient, math, cudnn"):
        ImageClassifier(**TINY_VIT, sdpa_backend="fast")


def test_sdpa_backend_restricts_every_step_and_keeps_the_logits(sdpa_calls):
    torch.manual_seed(0)
    plain = ImageClassifier(**TINY_VIT).eval()
    math_only = ImageClassifier(**TINY_VIT, sdpa_backend="math").eval()
    math_only.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 28, 28)
    expected = plain(images)
    torch.testing.assert_close(math_only(images), expected, atol=1e-5, rtol=1e-5)
    assert sdpa_calls[0][0] == {"flash", "efficient", "math"} and sdpa_calls[1][0] == {"math"}

    sdpa_calls.clear()
    _fit(math_only.train())  # training and validation steps
    assert len(sdpa_calls) == 3 and all(allowed == {"math"} for allowed, _ in sdpa_calls)
    assert torch.backends.cuda.flash_sdp_enabled(), "the restriction must end with the step"


def test_compile_wraps_model_and_ema_in_place(compiled):
    task = ImageClassifier(**TINY_VIT, ema_decay=0.9, compile=True)
    keys = list(task.state_dict())
    task.configure_model()
    assert len(compiled) == 2  # the trained model and its EMA copy
    assert list(task.state_dict()) == keys, "checkpoint keys must not gain an _orig_mod prefix"
    assert task(torch.randn(1, 3, 28, 28)).shape == (1, 3)


def test_trainer_calls_compile_and_bf16_mixed_reaches_attention(compiled, sdpa_calls):
    _fit(ImageClassifier(**TINY_VIT, compile=True), precision="bf16-mixed")
    assert len(compiled) >= 1
    assert sdpa_calls and all(dtype == torch.bfloat16 for _, dtype in sdpa_calls)


def _fit_one_batch(task: pl.LightningModule, batch: Any) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, DataLoader([batch], batch_size=None))
    return trainer


def _captioner_case() -> tuple[Callable[..., pl.LightningModule], Any, Callable[[pl.LightningModule], Any]]:
    """How to build the task, a training batch, and what evaluation computes with the compiled module."""
    batch = {"images": torch.randn(2, 3, 32, 32), "captions": torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]])}
    return (functools.partial(CaptioningTask, **TINY_CAPTIONER), batch,
            lambda task: task.eval_model(batch["images"], batch["captions"]))  # validation's logits and attention


def _detector_case() -> tuple[Callable[..., pl.LightningModule], Any, Callable[[pl.LightningModule], Any]]:
    # one image: a detector's compiled graphs break some thirty times, and each image goes through them
    batch = ([torch.rand(3, 48, 48)], [{"boxes": torch.tensor([[10.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([2])}])
    return functools.partial(DetectionTask, **TINY_FCOS), batch, lambda task: task(batch[0])


@pytest.mark.parametrize("case", [_captioner_case, _detector_case], ids=["captioner", "detector"])
def test_a_compiled_captioner_or_detector_trains_evaluates_and_checkpoints_as_the_plain_one(case, traced_compile,
                                                                                            tmp_path):
    """Only the classifier task took `compile`: the captioner and detector refused it as an unknown option."""
    build, batch, evaluate = case()
    torch.manual_seed(0)
    plain, compiled = build(ema_decay=0.5), build(ema_decay=0.5, compile=True)
    compiled.load_state_dict(plain.state_dict())
    plain_loss = _fit_one_batch(plain, batch).callback_metrics["train/loss"]
    trainer = _fit_one_batch(compiled, batch)
    assert compiled.model._compiled_call_impl is not None and compiled.eval_model._compiled_call_impl is not None
    assert plain.model._compiled_call_impl is None
    torch.testing.assert_close(trainer.callback_metrics["train/loss"], plain_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled.state_dict(), plain.state_dict(), atol=1e-5, rtol=1e-5)  # after the step
    with torch.no_grad():
        expected = evaluate(plain.eval())
        assert case is _captioner_case or len(expected[0]["scores"]), "no detection to compare"
        torch.testing.assert_close(evaluate(compiled.eval()), expected, atol=1e-5, rtol=1e-5)
        trainer.save_checkpoint(tmp_path / "compiled.ckpt")
        saved = torch.load(tmp_path / "compiled.ckpt", weights_only=False)["state_dict"]
        assert list(saved) == list(plain.state_dict()), "checkpoint keys must not gain an _orig_mod prefix"
        reloaded = build(ema_decay=0.5)
        reloaded.load_state_dict(saved)
        torch.testing.assert_close(evaluate(reloaded.eval()), expected, atol=1e-5, rtol=1e-5)


def test_the_captioners_training_forward_compiles_without_a_graph_break():
    """Its check of the caption ids compared their values in Python: three graph breaks in every compiled step."""
    task = CaptioningTask(**TINY_CAPTIONER)
    explained = torch._dynamo.explain(task.model)(torch.randn(2, 3, 32, 32), torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]]))
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_a_caption_id_past_the_vocabulary_is_one_line_in_a_compiled_run(traced_compile):
    """Compiled, the captioner leaves its own id check out (a graph break): the task checks the batch on the host."""
    batch = {"images": torch.randn(2, 3, 32, 32), "captions": torch.tensor([[1, 4, 12, 2], [1, 6, 2, 0]])}
    with pytest.raises(ConfigError, match=r"^captions hold token id 12 but vocab_size=9; give ids from 0 to"):
        _fit_one_batch(CaptioningTask(**TINY_CAPTIONER, compile=True), batch)


def test_compile_is_off_by_default(compiled):
    _fit(ImageClassifier(**TINY_VIT))
    assert compiled == []


@pytest.mark.parametrize("device, precision, refused", [
    ("cuda", "32-true", True), ("cuda", "bf16-mixed", False), ("cuda", "16-mixed", False), ("cpu", "32-true", False),
])
def test_flash_attention_in_float32_on_cuda_is_one_line_before_training(device, precision, refused):
    """CUDA's flash kernel has no float32 path: every step would fail with "No available kernel"."""
    from visattn.tasks.classification import check_sdpa_backend

    if refused:
        with pytest.raises(ConfigError, match=r"^model.init_args.sdpa_backend flash: CUDA's flash kernel needs 16-bit"):
            check_sdpa_backend("flash", torch.device(device), precision)
    else:
        check_sdpa_backend("flash", torch.device(device), precision)
    if device == "cuda":
        check_sdpa_backend("efficient", torch.device(device), precision)


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_an_attention_kernel_the_cpu_lacks_is_one_line_before_training(backend):
    """The CPU has flash and math kernels only: "No viable backend" was a traceback in the sanity check."""
    with pytest.raises(ConfigError, match=f"^model.init_args.sdpa_backend {backend}: the CPU has no {backend} "
                                          "attention kernel; use math or flash there"):
        _fit(ImageClassifier(**TINY_VIT, sdpa_backend=backend))


def test_grad_checkpointing_recomputes_under_the_steps_sdpa_backend():
    """The backward pass ran outside the restriction, so the recomputation chose another kernel than the
    forward and torch's checkpoint check failed at the first backward (the shipped ViT config's math)."""
    task = ImageClassifier(**TINY_VIT, grad_checkpointing=True, sdpa_backend="math")
    before = [p.detach().clone() for p in task.model.parameters()]
    _fit(task)
    assert all(not torch.equal(b, p) for b, p in zip(before, task.model.parameters()))


def test_an_average_of_weights_kept_in_16_bits_is_one_line():
    """bf16-true kept the EMA in bf16, whose steps of 0.001 mostly rounded away: it stayed near the start."""
    with pytest.raises(ConfigError, match="^model.init_args.ema_decay with trainer.precision bf16-true: the average"):
        _fit(ImageClassifier(**TINY_VIT, ema_decay=0.999), precision="bf16-true")


def test_grad_checkpointing_switches_the_vit_and_trains(monkeypatch):
    import visattn.models.vit
    recomputed = []

    def counting_checkpoint(block, x, **kwargs):
        recomputed.append(block)
        return checkpoint(block, x, **kwargs)

    monkeypatch.setattr(visattn.models.vit, "checkpoint", counting_checkpoint)
    task = ImageClassifier(**TINY_VIT, grad_checkpointing=True)
    assert task.model.grad_checkpointing and not ImageClassifier(**TINY_VIT).model.grad_checkpointing
    before = [p.detach().clone() for p in task.model.parameters()]
    _fit(task)
    assert len(recomputed) == 2  # one block, two training steps; validation runs without gradients
    assert all(not torch.equal(b, p) for b, p in zip(before, task.model.parameters()))


def test_grad_checkpointing_on_a_model_without_it_is_one_line():
    # timm's DLA asserts in set_grad_checkpointing; visattn's own classifiers all have it.
    with pytest.raises(ConfigError, match="grad_checkpointing: timm:dla46_c cannot recompute") as err:
        ImageClassifier(model_name="timm:dla46_c", num_classes=3, grad_checkpointing=True)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("task, precision", [(task, precision) for task in ("captioner", "detector")
                                             for precision in ("bf16-true", "16-true")] + [("detector", "64-true")])
def test_16_bit_weights_for_a_captioner_or_detector_are_one_line_before_the_run(task, precision):
    """Lightning casts every float of a batch too: the captioner's first validation failed on the scenes' bf16 item
    boxes with a traceback, and a detector's target check blamed the data for boxes it had not cast (float64
    under 64-true, which torchvision's GIoU loss cannot take either)."""
    from visattn.tasks.captioning import CaptioningTask
    from visattn.tasks.detection import DetectionTask

    built = (CaptioningTask(vocab=["<pad>", "<start>", "<end>", "<unk>", "top"]) if task == "captioner"
             else DetectionTask(num_classes=3))
    trainer = pl.Trainer(precision=precision, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(ConfigError, match=rf"^trainer.precision {precision}: .*; use trainer.precision bf16-mixed"):
        trainer.validate(built, DataLoader(TensorDataset(torch.zeros(2)), batch_size=1))


def test_predicted_probabilities_are_float32_under_bf16_autocast():
    """The shipped configs' bf16-mixed gave predict bf16 probabilities: ties among the top 5, and sums off 1."""
    task = ImageClassifier(**TINY_VIT).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        probabilities = task.predict_step(torch.randn(4, 3, 28, 28), 0)
    assert probabilities.dtype == torch.float32
    torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(4))


def test_an_sdpa_backend_for_a_model_without_scaled_dot_product_attention_warns_that_it_does_nothing():
    """On an attention ResNet (no layer calls F.scaled_dot_product_attention) it had changed nothing silently."""
    import warnings

    from visattn.errors import VisattnWarning

    with pytest.warns(VisattnWarning, match=r"^model.init_args.sdpa_backend math: se_resnet20_cifar has no "
                                            r"scaled-dot-product attention .*; drop it$"):
        ImageClassifier("se_resnet20_cifar", num_classes=3, sdpa_backend="math")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier(**TINY_VIT, sdpa_backend="math")
        ImageClassifier("timm:vit_tiny_patch16_224", num_classes=3, model_kwargs={"depth": 1}, sdpa_backend="math")
