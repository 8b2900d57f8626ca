"""Write tests/fixtures/weights/*.json: timm's tensor layout and outputs for deterministic weights.

The tests cannot download pretrained weights, so they prove that ``weights=`` loads
timm's layout correctly against these fixtures instead. For each supported model this
script builds timm's reference implementation (no download: ``pretrained=False``),
fills every tensor with ``blockzoo.weights.synthetic_tensor(name, shape)`` (values
from a seed derived from the tensor's name), runs it on ``fixture_input`` and writes:

    timm_model, timm_version, torch_version   where the numbers come from
    model, kwargs                              the blockzoo call that must reproduce them
    input                                      the input's shape (values: fixture_input)
    num_params                                 timm's parameter count (buffers excluded)
    keys                                       [name, shape, dtype] of timm's state dict
    logits                                     the first 100 logits of each sample
    logsumexp                                  logsumexp over all logits of each sample

``tests/test_weights.py`` rebuilds the tensors from the names and shapes alone, loads
them through ``blockzoo.create_model(model, weights=PATH, **kwargs)`` and requires the
same outputs. No weight file is stored. The re-param models in ``FUSED`` get a second
fixture, ``<name>_deploy.json``, for timm's fused form (``reparameterize_model``): its
``reparam_conv`` layout, filled and run the same way, loads into blockzoo's deploy form.

Run by hand where timm is installed (it is not a test dependency), from the repo root:

    python3 -m venv /tmp/timm-venv
    /tmp/timm-venv/bin/pip install torch==2.13.0 timm==1.0.31 --no-deps
    /tmp/timm-venv/bin/pip install pyyaml huggingface_hub safetensors numpy pillow \\
        typing_extensions filelock sympy networkx jinja2 fsspec packaging tqdm einops matplotlib
    /tmp/timm-venv/bin/python scripts/make_weight_fixtures.py [--only resnet18,...]

timm 1.0.x imports torchvision when it loads, and torchvision's wheels need a CUDA
build of torch. Nothing of torchvision is used by these models, so when torchvision is
not installed this script puts a stand-in on its own import path: a finder that
answers every ``import torchvision...`` with an empty module whose attributes are
placeholder classes. It only satisfies timm's imports; it is never called.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "weights"
sys.path.insert(0, str(ROOT / "src"))

N_LOGITS = 100

# timm name, blockzoo model, blockzoo kwargs beyond what the file's shapes give, input shape.
MODELS: list[tuple[str, str, dict, tuple[int, ...]]] = [
    ("resnet18", "resnet18", {}, (2, 3, 64, 64)),
    ("resnet34", "resnet34", {}, (2, 3, 64, 64)),
    ("resnet50", "resnet50", {}, (2, 3, 64, 64)),
    ("resnext50_32x4d", "resnext50", {}, (2, 3, 64, 64)),
    ("vit_tiny_patch16_224", "vit_tiny", {}, (2, 3, 224, 224)),
    ("vit_small_patch16_224", "vit_small", {}, (2, 3, 224, 224)),
    ("vit_base_patch16_224", "vit_base", {}, (2, 3, 224, 224)),
    ("mixer_b16_224", "mixer_tiny", {}, (2, 3, 224, 224)),
    ("resmlp_12_224", "resmlp_tiny", {}, (2, 3, 224, 224)),
    ("gmlp_s16_224", "gmlp_tiny", {}, (2, 3, 224, 224)),
    # the activation is not in the file: timm's convmixer_768_32 uses ReLU (the others GELU)
    ("convmixer_768_32", "convmixer", {"act_layer": "relu"}, (2, 3, 64, 64)),
    ("repvgg_a0", "repvgg_a0", {}, (2, 3, 64, 64)),
    ("repvgg_b0", "repvgg_b0", {}, (2, 3, 64, 64)),
    ("mobileone_s0", "mobileone_s0", {}, (2, 3, 64, 64)),
    # The issue-23 backbones. The transformers with a position embedding or a fixed
    # attention mask run at timm's 224 x 224 (timm's models are built for it); the others on
    # a non-square image, so a transposed height and width cannot pass.
    ("deit_tiny_patch16_224", "deit_tiny", {}, (2, 3, 224, 224)),
    ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled", {}, (2, 3, 224, 224)),
    ("swin_tiny_patch4_window7_224", "swin_tiny", {}, (2, 3, 224, 224)),
    ("pvt_v2_b0", "pvt_v2_b0", {}, (2, 3, 64, 96)),
    ("convnextv2_atto", "convnextv2_atto", {}, (2, 3, 64, 96)),
    ("mobilenetv3_small_100", "mobilenetv3_small", {}, (2, 3, 64, 96)),
    ("mobilenetv3_large_100", "mobilenetv3_large", {}, (2, 3, 64, 96)),
    # timm's Cait and VOLO take only the size their position embedding was built for
    ("cait_xxs24_224", "cait_xxs24", {}, (2, 3, 224, 224)),
    ("volo_d1_224", "volo_d1", {}, (2, 3, 224, 224)),
    # 64 x 64: every MobileViT map is even (patch 2), so timm does not resize it
    ("mobilevit_xxs", "mobilevit_xxs", {}, (2, 3, 64, 64)),
    # timm's LeViT and EfficientFormer take only the size their attention-bias tables fix
    ("levit_128s", "levit_128s", {}, (2, 3, 224, 224)),
    ("efficientformer_l1", "efficientformer_l1", {}, (2, 3, 224, 224)),
    # timm's models take only their own input size (strict_img_size)
    ("swinv2_tiny_window8_256", "swinv2_tiny", {}, (2, 3, 256, 256)),
    ("coat_lite_tiny", "coat_lite_tiny", {}, (2, 3, 224, 224)),
    ("crossvit_tiny_240", "crossvit_tiny", {}, (2, 3, 240, 240)),
    # timm's TNT, PiT and ConViT take only the size their position embeddings are learned for
    ("tnt_s_patch16_224", "tnt_s", {}, (2, 3, 224, 224)),
    ("pit_ti_224", "pit_ti", {}, (2, 3, 224, 224)),
    ("convit_tiny", "convit_tiny", {}, (2, 3, 224, 224)),
    # timm's Twins takes any multiple of 32: a non-square one (every reduced map keeps 2 x 3 keys)
    ("twins_pcpvt_small", "pcpvt_small", {}, (2, 3, 64, 96)),
    # 64 x 96: every LSA map (16 x 24 ... 2 x 3) is zero-padded to whole 7 x 7 groups
    ("twins_svt_small", "twins_svt_small", {}, (2, 3, 64, 96)),
]

# Re-param models whose fused (deploy) form gets a fixture of its own, <timm name>_deploy.json:
# the layout of timm's ``reparameterize_model(model)`` (one ``reparam_conv`` per block), filled
# by synthetic_tensor like the rest; blockzoo builds its deploy form from such a file.
FUSED = {"repvgg_a0", "repvgg_b0", "mobileone_s0"}


class _Placeholder(type):
    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import torchvision[.x.y]`` with empty modules: timm imports it, these models never use it."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


def _write(ref, stem: str, about: dict, shape: tuple[int, ...]) -> None:
    """Fill ``ref`` with synthetic_tensor, run it on fixture_input, write ``OUT/<stem>.json``."""
    import timm
    import torch

    from blockzoo.weights import fixture_input, synthetic_state_dict

    keys = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in ref.state_dict().items()]
    tensors = synthetic_state_dict(keys)
    # integer buffers other than BN's counter are indices the model computes from its structure
    # (EfficientFormer's persistent ``attention_bias_idxs``), not weights: keep the model's own
    tensors.update({k: v for k, v in ref.state_dict().items()
                    if not v.is_floating_point() and not k.endswith("num_batches_tracked")})
    ref.load_state_dict(tensors, strict=True)
    with torch.no_grad():
        out = ref(fixture_input(shape)).double()
    record = dict(
        timm_model=about["timm_model"], timm_version=timm.__version__, torch_version=torch.__version__,
        model=about["model"], kwargs=about["kwargs"], input=list(shape),
        num_params=sum(p.numel() for p in ref.parameters()), keys=keys,
        logits=[[round(float(v), 7) for v in row] for row in out[:, :N_LOGITS]],
        logsumexp=[round(float(v), 7) for v in out.logsumexp(1)],
    )
    path = OUT / f"{stem}.json"
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(keys)} tensors, {record['num_params']:,} params, "
          f"|logits| max {out.abs().max().item():.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated timm names (default: all)")
    args = parser.parse_args()
    if importlib.util.find_spec("torchvision") is None:
        sys.meta_path.insert(0, _TorchvisionStandIn())
    import timm
    import torch
    from timm.utils.model import reparameterize_model

    torch.set_num_threads(1)

    only = {s for s in args.only.split(",") if s}
    OUT.mkdir(parents=True, exist_ok=True)
    for timm_name, model, kwargs, shape in MODELS:
        if only and timm_name not in only:
            continue
        ref = timm.create_model(timm_name, pretrained=False).eval()
        _write(ref, timm_name, dict(timm_model=timm_name, model=model, kwargs=kwargs), shape)
        if timm_name in FUSED:
            fused = reparameterize_model(timm.create_model(timm_name, pretrained=False).eval())
            _write(fused, f"{timm_name}_deploy", dict(timm_model=f"reparameterize_model({timm_name})",
                                                      model=model, kwargs=kwargs), shape)


if __name__ == "__main__":
    main()
