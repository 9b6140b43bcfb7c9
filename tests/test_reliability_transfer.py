"""Fine-tuning from weights of another model: what a mismatch says, and that following it loads the weights."""
import re

import pytest
import torch

from visattn import create_model
from visattn.errors import VisattnWarning, WeightsError
from visattn.pretrained import read_state_dict, shipped_weights_dir


@pytest.mark.parametrize("detector, part", [("fcos_se_resnet20_cifar.scenes", "backbone.body."),
                                            ("detr_se_resnet20_cifar.scenes", "backbone.")])
def test_a_detectors_weights_in_a_classifier_name_the_backbone_part_that_loads(detector, part):
    """They were "no key in common; load weights saved from this architecture", which they are, under a prefix."""
    path = shipped_weights_dir() / f"{detector}.safetensors"
    with pytest.raises(WeightsError) as err:
        create_model("se_resnet20_cifar", pretrained=str(path), num_classes=3)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: weights do not fit ResNet (no key in common; ")
    assert f"those under {part!r} do" in message and f"read_state_dict({str(path)!r})" in message
    fix = re.search(r"pretrained=(\{.*\}), state being", message)[1]
    state = read_state_dict(path)
    given = eval(fix, {"state": state})  # the message's own fix, as a user would paste it
    with pytest.warns(VisattnWarning, match="no classifier 'fc' .*randomly initialised") as caught:
        model = create_model("se_resnet20_cifar", pretrained=given, num_classes=3)
    assert len([w for w in caught if issubclass(w.category, VisattnWarning)]) == 1
    loaded = model.state_dict()
    assert given and all(torch.equal(loaded[key], value) for key, value in given.items())
    assert loaded["fc.weight"].shape == (3, 112)


def test_weights_wrapped_whole_under_one_prefix_still_say_to_strip_it(tmp_path):
    state = {f"net.{k}": v for k, v in create_model("se_resnet20_cifar").state_dict().items()}
    torch.save(state, tmp_path / "user.pth")
    with pytest.raises(WeightsError, match=r"\(no key in common; the weights' keys all start with 'net.': strip that "
                                           r"prefix\); load weights saved from this architecture$"):
        create_model("se_resnet20_cifar", pretrained=str(tmp_path / "user.pth"))


@pytest.mark.parametrize("saved_as", ["name", "file"])
def test_weights_saved_from_another_architecture_name_the_model_they_fit(saved_as):
    """The Fashion-MNIST ViT's weights in a ViT-Ti/16 said only "build it with class_token=False, global_pool='avg'",
    which then failed on the depth; an SE-ResNet-20's in a ViT said "load weights saved from this architecture"."""
    source = "vit_tiny_patch4_28.fmnist"
    if saved_as == "file":
        source = str(shipped_weights_dir() / f"{source}.safetensors")
    with pytest.raises(WeightsError) as err:
        create_model("vit_tiny_patch16_224", pretrained=source, num_classes=3)
    message = str(err.value)
    built = re.search(r"; they are vit_tiny_patch4_28\.fmnist's weights: create_model\((.*)\) builds the model they "
                      r"fit$", message)
    assert "\n" not in message and built, message
    with pytest.warns(VisattnWarning, match="classifier 'head' does not fit num_classes=3"):
        model = eval(f"create_model({built[1]}, num_classes=3)", {"create_model": create_model})
    shipped = read_state_dict(shipped_weights_dir() / "vit_tiny_patch4_28.fmnist.safetensors")
    assert all(torch.equal(value, shipped[key]) for key, value in model.state_dict().items() if key in shipped
               and not key.startswith("head."))
    assert len(model.blocks) == 4 and model.head.weight.shape == (3, 192)
    with pytest.raises(WeightsError, match=r"; they are se_resnet20_cifar\.fmnist's weights: "
                                           r"create_model\('se_resnet20_cifar\.fmnist'\) builds the model they fit$"):
        create_model("vit_tiny_patch4_28", pretrained="se_resnet20_cifar.fmnist", num_classes=3)


def test_a_fine_tunes_checkpoint_builds_its_architecture_as_the_run_did(tmp_path):
    """A run fine-tuned from ARCH.TAG, started again from its checkpoint (the resume messages' advice) in the bare
    architecture, said to add class_token=False, then failed on the depth, the tag's builder arguments unnamed: the
    checkpoint now builds ARCH with the tag's arguments under the run's, and another architecture names that call."""
    with pytest.warns(VisattnWarning, match="dropped head.weight"):
        model = create_model("vit_tiny_patch4_28.fmnist", num_classes=3, drop_path_rate=0.1)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_name": "vit_tiny_patch4_28.fmnist", "num_classes": 3,
                                     "model_kwargs": {"drop_path_rate": 0.1}}}, tmp_path / "last.ckpt")
    path = str(tmp_path / "last.ckpt")
    with pytest.raises(WeightsError, match=re.escape(
            f"; they are vit_tiny_patch4_28.fmnist's weights: create_model('vit_tiny_patch4_28', pretrained={path!r}) "
            "builds the model they fit")):
        create_model("vit_tiny_patch16_224", pretrained=path, num_classes=2)
    rebuilt = create_model("vit_tiny_patch4_28", pretrained=path)
    assert len(rebuilt.blocks) == 4 and rebuilt.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert all(torch.equal(value, rebuilt.state_dict()[key]) for key, value in model.state_dict().items())
