"""Round-trip demo, no downloads: a random open_clip ViT in PyTorch -> vlalign_jax -> Hugging Face.

Prints the largest embedding difference at each hop. Run: python scripts/demo_convert.py [--model tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "ViT-B-32"],
                        help="tiny (seconds) or a full-size random ViT-B/32")
    args = parser.parse_args()

    import open_clip
    import torch
    import transformers

    from vlalign_jax import converters
    from vlalign_jax.cli import main as vlalign

    torch.manual_seed(0)
    if args.model == "tiny":
        ref = open_clip.model.CLIP(32, dict(image_size=32, patch_size=8, width=128, layers=2),
                                   dict(context_length=16, width=128, heads=2, layers=2), quick_gelu=True)
    else:
        ref = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    ref.eval()
    size, length = ref.visual.image_size[0], ref.context_length
    pixels = np.random.default_rng(0).standard_normal((4, size, size, 3)).astype(np.float32)
    tokens = np.zeros((4, length), np.int64)
    tokens[:, 0], tokens[:, 1:6], tokens[:, 6] = 49406, np.arange(400, 405), 49407
    with torch.no_grad():
        want = ref.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(ref.state_dict(), tmp / "open_clip.pt")
        vlalign(["convert", str(tmp / "open_clip.pt"), str(tmp / "ours"), "--from", "openai", "--to", "flax"])
        model, params = converters.load(tmp / "ours")
        ours = np.asarray(model.apply({"params": params}, pixels, method="encode_image"))
        print(f"open_clip -> vlalign_jax: image embeddings max |diff| = {np.abs(ours - want).max():.2e}")
        vlalign(["convert", str(tmp / "ours"), str(tmp / "hf"), "--to", "hf"])
        hf = transformers.CLIPModel.from_pretrained(tmp / "hf").eval()
        with torch.no_grad():
            out = hf.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        print(f"vlalign_jax -> transformers: image embeddings max |diff| = {np.abs(out.numpy() - want).max():.2e}")
        vlalign(["convert", str(tmp / "hf"), str(tmp / "back.pt"), "--to", "openai"])
        back = torch.load(tmp / "back.pt", weights_only=True)
        same = all(torch.equal(back[k], v) for k, v in ref.state_dict().items()) and back.keys() == ref.state_dict().keys()
        print(f"open_clip -> ours -> transformers -> open_clip state_dict bitwise identical: {same}")


if __name__ == "__main__":
    main()
