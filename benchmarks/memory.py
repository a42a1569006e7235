"""Peak memory of pruning a large torchvision model, each configuration in a fresh process.

Prints the model's own size, the process's resident memory after building it, the peak
during ``surgery.prune`` and the extra peak (peak - after building) as a multiple of the
model's size, for ``inplace=True`` and for a pruned copy, verification on and off.

    python benchmarks/memory.py [--model regnet_y_128gf] [--size 224]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, warnings, torch, torchvision, surgery
def _hwm_kb():  # this process's own peak RSS (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
warnings.simplefilter("ignore")
name, size, inplace, verify = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
torch.manual_seed(0)
model = torchvision.models.get_model(name, weights=None).eval()
for p in model.parameters():
    p.requires_grad_(False)
x = torch.randn(1, 3, size, size)
model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
built = rss()
small = surgery.prune(model, x, ratio=0.5, inplace=inplace, verify=verify)
peak = _hwm_kb() * 1024
print(json.dumps({"model_bytes": model_bytes, "built": built, "peak": peak}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="regnet_y_128gf")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    print(f"| {args.model} | model size GB | RSS after build GB | peak GB | extra peak / model size |")
    print("|---|---:|---:|---:|---:|")
    for inplace in (1, 0):
        for verify in (0, 1):
            out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.size), str(inplace), str(verify)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| inplace={bool(inplace)}, verify={bool(verify)} | failed: {out.stderr.strip()[-300:]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            gb = 1024 ** 3
            print(f"| inplace={bool(inplace)}, verify={bool(verify)} | {r['model_bytes'] / gb:.2f} | "
                  f"{r['built'] / gb:.2f} | {r['peak'] / gb:.2f} | {(r['peak'] - r['built']) / r['model_bytes']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
