"""Block-by-block pruning of a checkpoint folder, as a user runs it: the output is a standard
checkpoint that from_pretrained loads, equal to the masked original, written with one block
in memory at a time, in the checkpoint's dtype, with nothing left behind on a refusal."""
import json
import os

import pytest
import torch
import torch.nn as nn

from support import checkpoints as ck
from support.hf_models import TOKENS

import surgery.blockwise.prune as bw
from surgery.blockwise import PLAN_FILE, prune_checkpoint
from surgery.blockwise.calibration import calibration_ids
from surgery.blockwise.compensate import compensate
from surgery.core.errors import ArgumentError

pytest.importorskip("transformers")


def _ids(seed=5, rows=2, cols=12):
    return torch.randint(1, TOKENS, (rows, cols), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3", "llama-mqa"])
def test_pruned_folder_loads_and_equals_the_masked_original(tmp_path, family):
    src = ck.write(str(tmp_path / "src"), family)
    out = tmp_path / "out"
    plan = prune_checkpoint(src, out, ratio=0.5, criterion="wanda", calibration=ck.ids_file(str(tmp_path)),
                            samples=6, seq_len=8, batch_size=4, progress=False)
    small = ck.load(out)
    original = ck.load(src)
    assert small.config.num_attention_heads == original.config.num_attention_heads // 2
    assert small.config.intermediate_size == original.config.intermediate_size // 2
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in original.parameters())
    assert all(b["exact"] for b in plan["blocks"]) and len(plan["blocks"]) == 3
    assert [b["captured"] for b in plan["blocks"]] == [True, False, False]  # one capture, reused (and verified)
    reference = ck.masked_original(src, out / PLAN_FILE)
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=x).logits, reference(input_ids=x).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(small(input_ids=x).logits, original(input_ids=x).logits, atol=1e-3)
    text = small.generate(x[:1, :4], max_new_tokens=5, do_sample=False)
    assert text.shape == (1, 9)
    assert max(b["max_error"] for b in plan["blocks"]) < 1e-5


def test_dtype_kept_side_files_copied_single_file_source(tmp_path):
    src = ck.write(str(tmp_path / "src"), "llama", dtype=torch.bfloat16, shard=None, tokenizer=True)
    assert os.path.exists(os.path.join(src, "model.safetensors"))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="LlamaConfig refuses 3 heads"):  # transformers 5 checks 64 % heads
        plan = prune_checkpoint(src, out, ratio=0.25, criterion="l2", progress=False)  # weights only: no data
    assert "removed 0 of 4 heads" in plan["head_ratio_note"]
    with pytest.raises(ArgumentError, match=r"nearest head ratios it accepts: 0 \(4 heads\), 0.5 \(2 heads\)"):
        prune_checkpoint(src, tmp_path / "other", ratio=0.25, head_ratio=0.25, criterion="l2", progress=False)
    from safetensors import safe_open
    index = json.loads((out / "model.safetensors.index.json").read_text())
    dtypes = set()
    for name in set(index["weight_map"].values()):
        with safe_open(out / name, framework="pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(os.listdir(out))
    assert ck.load(out, torch.bfloat16).dtype == torch.bfloat16


def test_one_block_in_memory_at_a_time(tmp_path, monkeypatch):
    src = ck.write(str(tmp_path / "src"), "llama", layers=4)
    seen, real = [], bw.materialize
    built = {}
    skeleton = bw.skeleton

    def remember(config):
        model, name, blocks = skeleton(config)
        built.setdefault("blocks", blocks)
        return model, name, blocks

    def counting(module, prefix, *args, **kwargs):
        if "blocks" in built and module in built["blocks"]:
            seen.append(sum(any(p.device.type != "meta" for p in b.parameters()) for b in built["blocks"]))
        return real(module, prefix, *args, **kwargs)

    monkeypatch.setattr(bw, "skeleton", remember)
    monkeypatch.setattr(bw, "materialize", counting)
    prune_checkpoint(src, tmp_path / "out", ratio=0.5, criterion="l1", progress=False)
    assert seen == [0, 0, 0, 0]  # when each block is loaded, no other block holds memory


def test_feed_original_is_also_the_masked_original(tmp_path):
    src = ck.write(str(tmp_path / "src"), "llama")
    ids = ck.ids_file(str(tmp_path))
    plans = {feed: prune_checkpoint(src, tmp_path / feed, ratio=0.5, criterion="activation_norm", calibration=ids,
                                    samples=6, seq_len=8, feed=feed, progress=False) for feed in ("pruned", "original")}
    assert plans["original"]["options"]["feed"] == "original"
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ck.load(tmp_path / "original")(input_ids=x).logits,
                                   ck.masked_original(src, tmp_path / "original" / PLAN_FILE)(input_ids=x).logits,
                                   atol=1e-5, rtol=1e-4)


def test_flap_compensates_biases_that_from_pretrained_loads(tmp_path):
    src = ck.write(str(tmp_path / "src"), "llama")
    plan = prune_checkpoint(src, tmp_path / "out", ratio=0.5, criterion="flap", calibration=ck.ids_file(str(tmp_path)),
                            samples=6, seq_len=8, progress=False)
    assert plan["bias_switches"] == ["attention_bias", "mlp_bias"]
    assert all(set(b["bias_compensated"]) == {"self_attn.o_proj", "mlp.down_proj"} for b in plan["blocks"])
    small = ck.load(tmp_path / "out")
    layer = small.model.layers[1]
    assert layer.self_attn.o_proj.bias.abs().sum() > 0 and layer.mlp.down_proj.bias.abs().sum() > 0
    assert layer.self_attn.q_proj.bias.abs().sum() == 0 and layer.mlp.up_proj.bias.abs().sum() == 0
    with torch.no_grad():
        assert torch.isfinite(small(input_ids=_ids()).logits).all()


def test_compensation_removes_the_mean_part_of_the_layer_error():
    torch.manual_seed(0)
    layer = nn.Linear(8, 5).double()
    x = torch.randn(200, 8, dtype=torch.float64) + torch.linspace(-2, 2, 8, dtype=torch.float64)
    kept = [0, 2, 5, 7]
    small = nn.Linear(4, 5).double()
    with torch.no_grad():
        small.weight.copy_(layer.weight[:, kept])
        small.bias.copy_(layer.bias)
    before = (small(x[:, kept]) - layer(x)).pow(2).sum()
    compensate(small, {("", "in"): kept}, {"": layer.weight.detach()}, {"": (x.sum(0), x.shape[0])})
    after = (small(x[:, kept]) - layer(x)).pow(2).sum()
    removed = [1, 3, 4, 6]
    mean_part = x.shape[0] * (layer.weight[:, removed] @ x[:, removed].mean(0)).pow(2).sum()
    torch.testing.assert_close(after, before - mean_part)  # only the fluctuation of the removed inputs is left
    assert after < 0.7 * before


def test_a_family_whose_config_cannot_hold_the_biases_is_refused_and_nothing_is_left(tmp_path):
    src = ck.write(str(tmp_path / "src"), "qwen2")  # q/k/v biases are fixed, o_proj has none and no switch
    out = tmp_path / "out"
    with pytest.raises(ArgumentError, match="bias_compensation=False"):
        prune_checkpoint(src, out, ratio=0.5, criterion="flap", calibration=ck.ids_file(str(tmp_path)), samples=4,
                         seq_len=8, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(skip_blocks=(1, 0)), "config.json holds one count per model"),
    (dict(criterion="wanda"), "scores channels from activations"),
    (dict(feed="both"), "feed must be one of"),
    (dict(ratio=1.5), "ratio"),
])
def test_refusals_name_the_fix(tmp_path, kwargs, message):
    src = ck.write(str(tmp_path / "src"), "llama")
    with pytest.raises(ArgumentError, match=message):
        prune_checkpoint(src, tmp_path / "out", **{"ratio": 0.5, "criterion": "l1", "progress": False, **kwargs})
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_checkpoint_is_named_and_nothing_is_written(tmp_path):
    src = ck.write(str(tmp_path / "src"), "llama")  # sharded: drop one shard
    shard = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))[1]
    os.rename(os.path.join(src, shard), tmp_path / shard)
    with pytest.raises(ArgumentError, match=f"incomplete.*{shard}"):
        prune_checkpoint(src, tmp_path / "out", ratio=0.5, criterion="l1", progress=False)
    odd = ck.write(str(tmp_path / "odd"), "llama")
    config = json.loads(open(os.path.join(odd, "config.json")).read())
    config["model_type"] = "no_such_family"
    open(os.path.join(odd, "config.json"), "w").write(json.dumps(config))
    with pytest.raises(ArgumentError, match="cannot read its config.json"):
        prune_checkpoint(odd, tmp_path / "out", ratio=0.5, criterion="l1", progress=False)
    assert not (tmp_path / "out").exists()


def test_output_must_be_new(tmp_path):
    src = ck.write(str(tmp_path / "src"), "llama")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    for out, message in ((src, "checkpoint folder itself"), (tmp_path / "busy", "is not empty")):
        with pytest.raises(ArgumentError, match=message):
            prune_checkpoint(src, out, ratio=0.5, criterion="l1", progress=False)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(ArgumentError, match="no config.json"):
        prune_checkpoint(tmp_path / "busy", tmp_path / "x", ratio=0.5, criterion="l1", progress=False)
    prune_checkpoint(src, tmp_path / "done", ratio=0.5, criterion="l1", progress=False)
    with pytest.raises(ArgumentError, match="--overwrite"):
        prune_checkpoint(src, tmp_path / "done", ratio=0.25, head_ratio=0.5, criterion="l1", progress=False)
    prune_checkpoint(src, tmp_path / "done", ratio=0.25, head_ratio=0.5, criterion="l1", overwrite=True,
                     progress=False)
    assert ck.load(tmp_path / "done").config.intermediate_size == 72


def test_calibration_from_text_uses_the_checkpoint_tokenizer(tmp_path):
    src = ck.write(str(tmp_path / "src"), "llama", tokenizer=True)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i % 50}" for i in range(400)))
    ids = calibration_ids(text, src, samples=3, seq_len=10)
    assert ids.shape == (3, 10) and int(ids.max()) < 50
    with pytest.raises(ArgumentError, match="fewer than seq_len"):
        calibration_ids(text, src, samples=3, seq_len=1000)
    with pytest.raises(ArgumentError, match="no tokenizer"):
        calibration_ids(text, ck.write(str(tmp_path / "bare"), "llama"), samples=3, seq_len=10)
    plan = prune_checkpoint(src, tmp_path / "out", ratio=0.5, criterion="wanda", calibration=text, samples=4,
                            seq_len=10, progress=False)
    assert plan["calibration"]["tokens_per_rank"] == 40


def _rank_prune(rank, world, rendezvous, src, out, rows):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        plan = prune_checkpoint(src, out, ratio=0.5, criterion="wanda", calibration=rows[rank::world], progress=False)
        torch.save(json.dumps(plan["blocks"]), f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_sum_statistics_and_match_one_process_on_all_samples(tmp_path):
    import torch.multiprocessing as mp
    src = ck.write(str(tmp_path / "src"), "llama")
    rows = torch.randint(1, TOKENS, (8, 8), generator=torch.Generator().manual_seed(3))
    out = str(tmp_path / "two")
    mp.spawn(_rank_prune, args=(2, str(tmp_path / "rendezvous"), src, out, rows), nprocs=2, join=True)
    single = prune_checkpoint(src, tmp_path / "one", ratio=0.5, criterion="wanda", calibration=rows, progress=False)
    removed = [[b["removed"] for b in json.loads(torch.load(f"{out}.rank{r}"))] for r in range(2)]
    assert removed[0] == removed[1] == [b["removed"] for b in single["blocks"]]
    assert json.loads((tmp_path / "two" / PLAN_FILE).read_text())["calibration"]["ranks"] == 2
    with torch.no_grad():  # rank 0 wrote a complete checkpoint
        torch.testing.assert_close(ck.load(tmp_path / "two")(input_ids=_ids()).logits,
                                   ck.load(tmp_path / "one")(input_ids=_ids()).logits)


def test_command_line_prunes_a_folder(tmp_path, capsys):
    from surgery.cli import main
    src = ck.write(str(tmp_path / "src"), "llama")
    ids = ck.ids_file(str(tmp_path))
    code = main(["prune", src, "--output", str(tmp_path / "out"), "--ratio", "0.5", "--calibration", ids,
                 "--samples", "4", "--seq-len", "8", "--criterion", "flap"])
    out = capsys.readouterr().out
    assert code == 0 and "3 blocks pruned (flap), 3 verified exact" in out and "intermediate_size 96 -> 48" in out
    plan = json.loads((tmp_path / "out" / PLAN_FILE).read_text())
    assert plan["options"]["bias_compensation"] is True and plan["calibration"]["samples"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "0.5"], "add --output OUT_DIR"),
    (["--output", "OUT"], "add --ratio R"),
    (["--output", "OUT", "--ratio", "0.5", "--target-flops", "0.5"], "--target-flops"),
    (["--output", "OUT", "--ratio", "0.5"], "needs calibration|scores channels from activations"),
    (["--output", "SRC", "--ratio", "0.5", "--criterion", "l1"], "checkpoint folder itself"),
])
def test_command_line_refusals_are_one_line(tmp_path, capsys, argv, message):
    from surgery.cli import main
    src = ck.write(str(tmp_path / "src"), "llama")
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("SRC", src) for a in argv]
    capsys.readouterr()  # what writing the checkpoint printed
    code = main(["prune", src, *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert any(m in err for m in message.split("|"))


def test_checkpoint_flags_on_a_model_name_are_refused(capsys):
    from surgery.cli import main
    assert main(["prune", "resnet20", "--ratio", "0.5", "--samples", "4"]) == 2
    assert "--samples only apply when MODEL is a checkpoint folder" in capsys.readouterr().err


def test_lora_recovery_writes_a_merged_standard_checkpoint(tmp_path):
    pytest.importorskip("peft")
    from surgery.blockwise.recover import lora_recover, perplexity
    src = ck.write(str(tmp_path / "src"), "llama", tokenizer=True)
    prune_checkpoint(src, tmp_path / "small", ratio=0.5, criterion="l1", progress=False)
    rows = torch.randint(1, TOKENS, (16, 12), generator=torch.Generator().manual_seed(0))
    before = perplexity(ck.load(tmp_path / "small"), rows)
    losses = lora_recover(tmp_path / "small", tmp_path / "lora", rows, steps=30, batch_size=8, lr=5e-3,
                          progress=False)
    tuned = ck.load(tmp_path / "lora")
    assert not any("lora" in k for k in tuned.state_dict())  # merged: plain weights
    assert tuned.config.intermediate_size == 48 and "tokenizer.json" in os.listdir(tmp_path / "lora")
    assert perplexity(tuned, rows) < before and losses[-1] < losses[0]


def test_a_plan_replays_to_the_same_checkpoint_and_an_edited_one_is_refused(tmp_path, capsys):
    from safetensors.torch import load_file
    from surgery.blockwise.replay import replay_checkpoint
    from surgery.cli import main
    src = ck.write(str(tmp_path / "src"), "llama")
    ids = ck.ids_file(str(tmp_path))
    first = prune_checkpoint(src, tmp_path / "first", ratio=0.5, criterion="wanda", calibration=ids, samples=6,
                             seq_len=8, progress=False)
    capsys.readouterr()
    assert main(["prune", src, "--output", str(tmp_path / "again"), "--replay",
                 str(tmp_path / "first" / PLAN_FILE)]) == 0
    again = json.loads((tmp_path / "again" / PLAN_FILE).read_text())
    assert [b["removed"] for b in again["blocks"]] == [b["removed"] for b in first["blocks"]]
    assert again["options"]["criterion"] == "replay" and all(b["exact"] for b in again["blocks"])

    def weights(folder):
        return {k: v for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")
                for k, v in load_file(os.path.join(folder, f)).items()}
    a, b = weights(tmp_path / "first"), weights(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    edited = json.loads((tmp_path / "first" / PLAN_FILE).read_text())
    edited["blocks"][1]["removed"]["mlp.down_proj"]["in"].pop()
    with pytest.raises(ArgumentError, match="block 1 does not replay"):
        replay_checkpoint(src, tmp_path / "edited", edited, progress=False)
    assert not (tmp_path / "edited").exists()
