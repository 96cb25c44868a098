"""Test-wide settings.

Eight host CPU devices, so sharding and collective tests run on a CPU-only machine (this must happen
before jax is imported), and fp32 matmuls at full precision so parity tolerances mean what they say.
XLA's backend optimisation is turned down: the test models are tiny, so compile time dominates.
"""

import os

TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def write_word_tokenizer():
    """`write(folder, words) -> vocabulary size`: a word-level tokenizer.json ("<eos>" appended) and a
    tokenizer_config.json naming the pad token, loadable where FG-CLIP 2's Gemma tokenizer is."""
    tokenizers = pytest.importorskip("tokenizers")

    def write(folder, words) -> int:
        import json

        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A <eos>",
                                                                      special_tokens=[("<eos>", 1)])
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "<eos>",
            "bos_token": "<bos>", "unk_token": "<unk>", "padding_side": "right"}))
        return len(words)

    return write
