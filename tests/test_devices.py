"""`--device`: names are checked against the machine before any weights are read; loaders put the
model there and hand results back on the CPU."""
import pytest
import torch

from visattn.devices import inference_device
from visattn.errors import ConfigError
from visattn.inference.classifier import load_classifier


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that reports two CUDA devices (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert inference_device("auto") == torch.device("cpu")


def test_auto_is_the_apple_gpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert inference_device("auto") == torch.device("mps")


def test_auto_is_the_first_gpu_with_cuda(two_gpus):
    assert inference_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_each_gpu_the_machine_has_is_accepted(two_gpus, name):
    assert inference_device(name) == torch.device(name)


def test_a_gpu_past_the_last_names_how_many_there_are(two_gpus):
    with pytest.raises(ConfigError, match=r"^device='cuda:2': this machine has 2 CUDA devices; use cpu or auto$"):
        inference_device("cuda:2")


def test_cuda_on_a_machine_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="this machine has 0 CUDA devices"):
        inference_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "meta", ""])
def test_names_that_are_not_inference_devices(name):
    with pytest.raises(ConfigError, match=r"not a device; use cpu, cuda, cuda:N, mps, or auto"):
        inference_device(name)


def test_a_bad_device_fails_before_the_weights_are_read(tmp_path):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(ConfigError, match="^device='tpu': not a device"):  # not the missing-checkpoint error
        load_classifier(checkpoint=str(missing), device="tpu")


def test_loaded_classifier_is_on_the_device_and_answers_on_the_cpu():
    classifier = load_classifier("se_resnet20_cifar", device="cpu")
    assert classifier.device == torch.device("cpu")
    probs = classifier.predict(torch.randn(2, *classifier.preprocessing["input_size"]))
    assert probs.device == torch.device("cpu") and torch.allclose(probs.sum(dim=1), torch.ones(2))


def test_an_empty_batch_gives_empty_results():
    from visattn.inference.captioner import load_captioner
    from visattn.inference.detector import load_detector

    assert load_classifier("se_resnet20_cifar").predict(torch.zeros(0, 3, 28, 28)).shape == (0, 10)
    decoded = load_captioner("sat_cbam_resnet_scenes").caption(torch.zeros(0, 3, 64, 64))
    assert decoded.tokens == [] and decoded.attention == [] and decoded.scores.shape == (0,)
    assert load_detector("detr_se_resnet20_cifar").detect([], attention=True) == []
