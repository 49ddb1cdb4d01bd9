"""Reference side of the Qwen3 parity tests (crates/student/tests/qwen3_parity.rs).

Uses transformers, peft and tokenizers from PyPI; downloads nothing.

  setup DIR   builds in DIR a tiny random Qwen3 checkpoint (tied embeddings; a sharded copy), a
              byte-level BPE tokenizer with Qwen's special tokens and the chat template of
              tests/fixtures/qwen3_chat_template.jinja, a PEFT LoRA adapter with non-zero B, and
              reference.safetensors: logits of the batch, logits with the adapter, the LoRA loss
              before and after one SGD step. With DIR/chat_input.json (written by the Rust test)
              it also writes chat_reference.json: apply_chat_template's text and token ids.
  verify DIR  loads DIR/merged (saved by tracelab) with transformers and DIR/rust_adapter (saved
              by tracelab) with peft over DIR/model, and writes their logits of the batch to
              DIR/verify.safetensors.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added but not special, as in Qwen's tokenizer.
ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "I'd like to find a restaurant in San Jose that serves Italian food.",
    "Sure, how about Il Fornaio? It is a moderately priced restaurant in San Jose.",
    '{"name": "FindRestaurants", "arguments": {"city": "San Jose", "cuisine": "Italian"}}',
    "Please reserve a table for 2 people at 7 pm tomorrow. Zürich, München, café.",
    "You may call one or more functions to assist with the user query.",
    "The reservation is confirmed. Is there anything else I can help you with?",
]


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIAL
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_tokens(ADDED)
    with open(os.path.join(HERE, "fixtures", "qwen3_chat_template.jinja")) as f:
        template = f.read()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = template
    return fast


def build_model(vocab_size):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        # Random norm weights, so that a norm applied to the wrong tensor shows.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def batch(vocab_size):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100  # the "prompt" carries no loss
    return ids, labels


def setup(out):
    from peft import LoraConfig, get_peft_model

    tok = build_tokenizer()
    model = build_model(len(tok))
    model_dir = os.path.join(out, "model")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    model.save_pretrained(os.path.join(out, "model_sharded"), max_shard_size="100KB")
    ids, labels = batch(len(tok))
    ref = {"input_ids": ids, "labels": labels}
    with torch.no_grad():
        ref["logits"] = model(ids).logits.contiguous()

    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(os.path.join(out, "adapter"))
    peft_model.train()  # dropout is 0: training mode changes nothing but is what a step uses
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    outp = peft_model(input_ids=ids, labels=labels)
    ref["logits_lora"] = outp.logits.detach().contiguous()
    ref["loss0"] = outp.loss.detach().reshape(1)
    outp.loss.backward()
    opt.step()
    with torch.no_grad():
        ref["loss1"] = peft_model(input_ids=ids, labels=labels).loss.detach().reshape(1)
    save_file(ref, os.path.join(out, "reference.safetensors"))

    chat_in = os.path.join(out, "chat_input.json")
    if os.path.exists(chat_in):
        with open(chat_in) as f:
            chat = json.load(f)
        messages = []
        for m in chat["messages"]:
            m = dict(m)
            if m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    c = json.loads(json.dumps(c))
                    c["function"]["arguments"] = json.loads(c["function"]["arguments"])
                    calls.append(c)
                m["tool_calls"] = calls
            messages.append(m)
        text = tok.apply_chat_template(messages, tools=chat["tools"], tokenize=False)
        enc = tok.apply_chat_template(messages, tools=chat["tools"], tokenize=True)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        with open(os.path.join(out, "chat_reference.json"), "w") as f:
            json.dump({"text": text, "ids": list(ids)}, f, ensure_ascii=False)


def verify(out):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ref = load_file(os.path.join(out, "reference.safetensors"))
    ids = ref["input_ids"]
    res = {}
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(out, "merged"), dtype=torch.float32).eval()
    with torch.no_grad():
        res["merged_logits"] = merged(ids).logits.contiguous()
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "model"), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, os.path.join(out, "rust_adapter")).eval()
    with torch.no_grad():
        res["adapter_logits"] = adapted(ids).logits.contiguous()
    save_file(res, os.path.join(out, "verify.safetensors"))


if __name__ == "__main__":
    {"setup": setup, "verify": verify}[sys.argv[1]](sys.argv[2])
