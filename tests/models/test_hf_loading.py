import json

import pytest
import torch

from portkit.models.hf import CheckpointFormatError, load_gpt2
from portkit.models.tokenizer import GPT2BPE, _byte_to_unicode

transformers = pytest.importorskip("transformers")


@pytest.fixture
def hf_dir(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=300)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(tmp_path)
    return tmp_path, model


def test_loaded_checkpoint_gives_the_same_logits(hf_dir):
    path, ref = hf_dir
    assert (path / "model.safetensors").exists()
    model = load_gpt2(path).eval()
    x = torch.randint(0, 300, (2, 13))
    with torch.no_grad():
        want = ref(x).logits
        got = model.logits(model.trunk(x))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_pytorch_model_bin_is_read_too(hf_dir, tmp_path):
    path, ref = hf_dir
    (path / "model.safetensors").unlink()
    torch.save(ref.state_dict(), path / "pytorch_model.bin")
    model = load_gpt2(path)
    assert torch.equal(model.wte.weight, ref.transformer.wte.weight)


def test_unsupported_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointFormatError, match="no config.json"):
        load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointFormatError, match="model_type 'llama' is not supported"):
        load_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer is not supported: vocab.json, merges.txt missing"):
        GPT2BPE(tmp_path)


def test_gpt2_bpe_matches_transformers(tmp_path):
    chars = sorted(set(_byte_to_unicode().values()))
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at")]
    vocab = {c: i for i, c in enumerate(chars)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    ours = GPT2BPE(tmp_path)
    theirs = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    text = "the cat in the hat, 42 times!  héllo\nthe end"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(ours.encode(text)) == text
    assert ours.prompt_ids("x")[0] == ours.bos_id == vocab["<|endoftext|>"]
