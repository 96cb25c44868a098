"""DeGLA's hard negatives written by a local causal language model, prompted in context.

DeGLA (research/degla.md section 2.2) has LLaMA-3.1-8B-Instruct rewrite each COCO caption with the
prompt "rewrite the input text following the rules <rewrite rule> and example below: <example>;
Input text: <input text>", the examples being hand-picked ChatGPT rewrites, for five negative types.
The paper's exact rules, number of shots and decoding settings were not reachable, so the prompts
here are our own, written to that skeleton: one rule and four examples per type, ending in
"Input: <caption>\\nOutput:" so that the first line of the continuation is the answer.

Any causal LM folder that transformers can load works (base or instruct; `chat_template=True` wraps
the prompt in the tokenizer's chat template). Prompts are generated in batches with left padding,
greedily first (or sampled with `sample_first`), for at most `max_new_tokens` tokens and until every
row has written a line. Each answer is checked by `negatives_rules.validate_negative`; an invalid one
is asked again, sampled, up to `retries` more times, and every rejected output is counted by reason
in `rejected`. Nothing is downloaded: the model folder must be local.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from vlalign_jax.data.negatives_rules import KINDS, validate_negative

if TYPE_CHECKING:
    from vlalign_jax.data.negatives_job import NegativeRequest

PROMPT_HEAD = "Rewrite the input text following the rule and the examples below."
RULES = {
    "reshuffle": "Reorder the words of the input so that it describes a different scene. Use exactly the same "
                 "words, each as often as in the input, add or drop none, and keep it a fluent sentence.",
    "swap_nouns": "Swap the positions of two nouns (objects, animals or people) in the input so that the "
                  "sentence becomes false. Leave every other word where it is.",
    "swap_adjectives": "Swap two adjectives (colours, sizes, materials or other attributes) that describe "
                       "different objects in the input, so each object gets the other's attribute.",
    "replace_adjectives": "Replace one adjective in the input with a different adjective of the same kind so "
                          "that the sentence becomes false. Change nothing else.",
    "replace_nouns": "Replace one noun in the input with a different, plausible noun so that the sentence "
                     "becomes false. Change nothing else.",
}
EXAMPLES = {  # (input, output), written for these prompts in the style of COCO captions
    "reshuffle": [
        ("A dog chasing a cat across the yard.", "A cat chasing a dog across the yard."),
        ("A man sitting on a bench next to a bicycle.", "A bicycle sitting on a bench next to a man."),
        ("A plate with a sandwich on a table.", "A table with a sandwich on a plate."),
        ("A small boy holding a big umbrella.", "A big boy holding a small umbrella."),
    ],
    "swap_nouns": [
        ("A cat sleeping on a laptop.", "A laptop sleeping on a cat."),
        ("A woman riding a horse on the beach.", "A horse riding a woman on the beach."),
        ("Two dogs playing with a ball in the park.", "Two balls playing with a dog in the park."),
        ("A clock hanging above a door.", "A door hanging above a clock."),
    ],
    "swap_adjectives": [
        ("A red car parked next to a white truck.", "A white car parked next to a red truck."),
        ("A tall man standing beside a short woman.", "A short man standing beside a tall woman."),
        ("A wooden table with a glass vase on it.", "A glass table with a wooden vase on it."),
        ("A black cat lying on a green blanket.", "A green cat lying on a black blanket."),
    ],
    "replace_adjectives": [
        ("A red bus driving down the street.", "A blue bus driving down the street."),
        ("A large elephant standing in a field.", "A small elephant standing in a field."),
        ("A wooden bench in a park.", "A metal bench in a park."),
        ("An empty kitchen with white cabinets.", "A crowded kitchen with white cabinets."),
    ],
    "replace_nouns": [
        ("A man riding a skateboard down a ramp.", "A man riding a bicycle down a ramp."),
        ("A cat sitting on top of a car.", "A dog sitting on top of a car."),
        ("A plate of pizza on a table.", "A plate of cake on a table."),
        ("Two giraffes standing near a tree.", "Two zebras standing near a tree."),
    ],
}
TEXT_EXTRA = "`pip install 'vlalign-jax[text]'` (transformers, tokenizers) and PyTorch (`pip install torch`)"


def build_prompt(kind: str, caption: str) -> str:
    """The few-shot prompt for one caption and negative type; the answer is the next line."""
    if kind not in RULES:
        raise ValueError(f"unknown negative type {kind!r}; expected one of {KINDS}")
    shots = "".join(f"Input: {source}\nOutput: {target}\n\n" for source, target in EXAMPLES[kind])
    return f"{PROMPT_HEAD}\nRule: {RULES[kind]}\n\n{shots}Input: {' '.join(caption.split())}\nOutput:"


def parse_continuation(continuation: str) -> str:
    """The answer in a continuation: its first non-blank line, without a repeated "Output:" label or
    quotes around it, whitespace collapsed."""
    line = continuation.lstrip().split("\n", 1)[0].strip()
    if line.lower().startswith("output:"):
        line = line[len("output:"):].strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return " ".join(line.split())


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 48
    retries: int = 2  # sampled attempts after an invalid answer
    temperature: float = 0.8  # for sampled attempts
    top_p: float = 0.95
    sample_first: bool = False  # the first attempt greedy (False) or sampled (True)
    chat_template: bool = False  # wrap each prompt as a user turn of the tokenizer's chat template


def _import_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"The language-model mode of `vlalign negatives` needs {TEXT_EXTRA}; "
                          f"or use --mode rules, which needs neither.") from e
    return torch, transformers


def _newline_stop(transformers: Any, torch: Any, tokenizer: Any, prompt_length: int) -> Any:
    """A stopping criterion, per row: done once the row's continuation holds a line of text.
    (transformers' `stop_strings` assumes a subword vocabulary, so decoding is checked directly.)"""

    class NewlineStop(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            return torch.tensor(["\n" in text.lstrip() for text in texts], device=input_ids.device)

    return transformers.StoppingCriteriaList([NewlineStop()])


class CausalLmNegatives:
    """Writes negatives with a causal LM: `write(requests)` -> one accepted text or None per request.

    `rejected` counts every invalid output by reason (one request may add several, one per attempt).
    """

    def __init__(self, model_path: str | os.PathLike, settings: GenerationSettings = GenerationSettings(),
                 batch_size: int = 16, seed: int = 0, device: str | None = None):
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"language model folder not found: {model_path}")
        torch, transformers = _import_transformers()
        self.torch, self.transformers = torch, transformers
        self.settings, self.batch_size = settings, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(os.fspath(model_path), local_files_only=True)
        self.tokenizer.padding_side = "left"  # every prompt ends at the last column, where generation starts
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ValueError(f"{model_path}: the tokenizer has neither a pad nor an eos token to pad with")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if settings.chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{model_path}: chat_template asked for, but the tokenizer has no chat template")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
        dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            os.fspath(model_path), local_files_only=True, **{dtype_key: dtype}).to(self.device).eval()
        # Instruct models end a turn with their own token (Llama 3: <|eot_id|>), listed in generation_config.
        self.eos_token_id = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        torch.manual_seed(seed)
        self.rejected: Counter[str] = Counter()

    def prompt(self, request: NegativeRequest) -> str:
        text = build_prompt(request.kind, request.caption)
        if self.settings.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    def generate(self, prompts: Sequence[str], sample: bool) -> list[str]:
        """Raw continuations of `prompts`, `batch_size` at a time."""
        settings, torch = self.settings, self.torch
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} if sample \
            else {"do_sample": False}
        config = self.transformers.GenerationConfig(
            max_new_tokens=settings.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_token_id, **sampling)
        continuations: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self.tokenizer(list(prompts[start:start + self.batch_size]), return_tensors="pt",
                                   padding=True, add_special_tokens=not settings.chat_template).to(self.device)
            prompt_length = batch["input_ids"].shape[1]
            stop = _newline_stop(self.transformers, torch, self.tokenizer, prompt_length)
            with torch.no_grad():
                output = self.model.generate(**batch, generation_config=config, stopping_criteria=stop)
            continuations += self.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return continuations

    def write(self, requests: Sequence[NegativeRequest]) -> list[str | None]:
        """One valid negative per request, or None once 1 + `retries` attempts were all rejected.
        A request with `draw` > 0 (the same type asked again) is sampled from the first attempt."""
        results: list[str | None] = [None] * len(requests)
        prompts = [self.prompt(request) for request in requests]
        waiting = list(range(len(requests)))
        for attempt in range(1 + self.settings.retries):
            if not waiting:
                break
            sampled = [i for i in waiting if attempt > 0 or self.settings.sample_first or requests[i].draw > 0]
            greedy = sorted(set(waiting) - set(sampled))
            still_waiting = []
            for sample, indices in ((False, greedy), (True, sampled)):
                if not indices:
                    continue
                for i, continuation in zip(indices, self.generate([prompts[i] for i in indices], sample)):
                    text = parse_continuation(continuation)
                    request = requests[i]
                    reason = validate_negative(request.caption, text, request.kind, request.avoid)
                    if reason is None:
                        results[i] = text
                    else:
                        self.rejected[reason] += 1
                        still_waiting.append(i)
            waiting = sorted(still_waiting)
        return results
