"""Tracing models built on the meta device: time and peak resident memory beyond the runtime.

LLaMA-2-7B's shape (transformers, torch.export front) and torchvision's regnet_y_128gf (fx
front), both built under ``torch.device("meta")`` (no weights allocated), traced with
``surgery.trace``. Each model runs in its own process, so peaks do not mix.

    python benchmarks/meta_trace.py [--models llama-7b,regnet_y_128gf]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, warnings
def _hwm_kb():  # this process's own peak RSS (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
import torch
warnings.simplefilter("ignore")
torch.set_num_threads(2)
name = sys.argv[1]
import surgery
base = _hwm_kb()
if name == "llama-7b":
    import transformers as tf
    cfg = tf.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                         num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096)
    with torch.device("meta"):
        model = tf.LlamaForCausalLM(cfg).eval()
    x, kw = torch.zeros(1, 128, dtype=torch.long), dict(tracer="export", attention="heads")
else:
    import torchvision
    from torchvision.models import regnet
    if name == "regnet_y_128gf":  # its builder computes widths with tensors: do that off the meta device
        params = regnet.BlockParams.from_init_params(depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264,
                                                     se_ratio=0.25)
        with torch.device("meta"):
            model = regnet.RegNet(params, norm_layer=torch.nn.BatchNorm2d).eval()
    else:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None).eval()
    x, kw = torch.zeros(1, 3, 224, 224), {}
built = _hwm_kb()
t0 = time.perf_counter()
graph = surgery.trace(model, x, **kw)
seconds = time.perf_counter() - t0
peak = _hwm_kb()
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "seconds": seconds,
                  "groups": len(graph.prunable_groups), "extra_mb": (peak - built) / 1024,
                  "runtime_mb": built / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama-7b,regnet_y_128gf")
    args = p.parse_args()
    print("| model | parameters (meta) | trace s | prunable groups | peak RSS beyond runtime MB |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        out = subprocess.run([sys.executable, "-c", CHILD, name], capture_output=True, text=True)
        if out.returncode:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1][:120]} | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['params'] / 1e9:.2f} B | {r['seconds']:.1f} | {r['groups']} | {r['extra_mb']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
