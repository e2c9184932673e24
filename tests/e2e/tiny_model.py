"""Build a tiny Llama and its tokenizer offline, for a real vLLM server to serve.

Run with the vLLM venv's python (it needs torch, transformers and tokenizers):

    python tests/e2e/tiny_model.py OUTDIR

No model can be downloaded on these machines, so this makes one: a 2-layer Llama with seeded random
weights (saved as safetensors) and a byte-level BPE tokenizer trained on the standard library's own
Python sources. The text it generates is nonsense; the token counts are what the tests need.
Idempotent: an OUTDIR that already holds config.json and tokenizer.json is left alone.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import time
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# The stdlib modules the tokenizer learns from: plenty of text, always present, same bytes on every
# machine with this Python, so the tokenizer (and every prompt's token count) is reproducible.
CORPUS_MODULES = [
    "argparse.py",
    "collections/__init__.py",
    "dataclasses.py",
    "email/message.py",
    "inspect.py",
    "json/decoder.py",
    "logging/__init__.py",
    "pathlib.py",
    "subprocess.py",
    "textwrap.py",
    "typing.py",
    "unittest/case.py",
]


def is_built(outdir: Path) -> bool:
    return (
        (outdir / "config.json").is_file()
        and (outdir / "tokenizer.json").is_file()
        and any(outdir.glob("*.safetensors"))
    )


def corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in CORPUS_MODULES:
        path = stdlib / name
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    if not texts:  # a stripped Python: fall back to generated English-ish text
        words = [
            "the",
            "token",
            "economy",
            "exporter",
            "attributes",
            "energy",
            "to",
            "input",
            "and",
            "output",
            "tokens",
        ]
        texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(200)) for i in range(500)]
    return texts


def build_tokenizer(outdir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(outdir)
    return fast


def build_model(outdir: Path, tokenizer) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(outdir, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(outdir)


def build(outdir: Path) -> bool:
    """Build the model into outdir unless it is already there; True if it built."""
    outdir.mkdir(parents=True, exist_ok=True)
    if is_built(outdir):
        return False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    tokenizer = build_tokenizer(outdir)
    build_model(outdir, tokenizer)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(argv[1])
    started = time.monotonic()
    built = build(outdir)
    verb = "built" if built else "already built"
    print(f"tiny model {verb} in {outdir} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
