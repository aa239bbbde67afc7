"""One training step (forward + backward + SGD step) under each loss, and its memory.

The cifar_wrn pair (teacher WRN-40-2, student WRN-16-2), batch 128, 32x32. Each variant is timed
round-robin with the others; the field's baselines (DKD, logit standardisation, CAT-KD, e2KD)
have a row each, with compare.py's weights. The "teacher cache" row is the default loss with the teacher's
outputs read from a memory-mapped float16 :class:`distill.TeacherCache` (as the students of a
comparison read them), so no teacher runs; compare it with "CE (student only)". Memory is the
size of the tensors autograd saves for the backward pass (unique storages; the step's peak
beyond the weights), and on CUDA also the peak allocated.

``--compile MODE ...`` adds one row per ``torch.compile`` mode: the default loss on compiled
copies of the two networks (``distill.training.compile.compile_distiller``, as ``trainer.compile`` does),
each with its own optimizer; compilation happens in untimed warm-up calls. ``--channels-last``
adds the default loss on channels-last copies (``trainer.channels_last``) in the same way.

Usage:
    python benchmarks/bench_step.py [--batch 128] [--repeats 5] [--device cpu|cuda]
                                    [--compile default reduce-overhead] [--channels-last]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import machine, measure_interleaved, table  # benchmarks/ is on sys.path

from distill import ExplanationDistiller, TeacherCache, build_model
from distill.losses import e2kd_options
from distill.training.compile import compile_distiller

GROUPS = [("block1", "block1"), ("block2", "block2"), ("block3", "block3")]
LOGITS_ONLY = {"ce_weight": 1.0, "kd_weight": 0.0, "map_weight": 0.0}  # CE 1, no KD or maps
VARIANTS: dict[str, dict] = {
    "CE + KD": {"map_weight": 0.0},
    "CE + KD + Grad-CAM++ (default layer, closed form)": {},
    "CE + KD + Grad-CAM++ (default layer, autograd forced)": {"map_closed_form": False},
    "CE + KD + Grad-CAM++ (mid layer block2, autograd)": {
        "map_layers": [("block2", "block2", 1.0)]
    },
    "CE + KD + Grad-CAM (default layer)": {"map_method": "gradcam"},
    # Every other CAM method as compare.py's kd_<method> trains with it.
    **{
        f"CE + KD + {name} (default layer)": {"map_method": name}
        for name in ("xgradcam", "layercam", "hirescam", "gradcam_elementwise", "cam", "eigencam")
    },
    "CE + KD + attention transfer (3 groups)": {
        "map_weight": 0.0,
        "at_weight": 1000.0,
        "at_layers": GROUPS,
    },
    # The field's baselines as compare.py runs them (the DKD warm-up changes no cost).
    "DKD (CE + DKD)": {**LOGITS_ONLY, "dkd_weight": 1.0, "dkd_warmup_epochs": 0},
    "KD, logit standardisation (CE 0.1 + KD 9, T 2)": {
        "kd_weight": 9.0,
        "temperature": 2.0,
        "logit_standardize": True,
        "map_weight": 0.0,
    },
    "DKD, logit standardisation": {
        **LOGITS_ONLY,
        "dkd_weight": 1.0,
        "dkd_warmup_epochs": 0,
        "logit_standardize": True,
    },
    "CAT-KD (CE + CAT, beta 12)": {**LOGITS_ONLY, "cat_weight": 12.0},
    "e2KD (CE + KD + Grad-CAM cosine, teacher's class)": e2kd_options(),
}
REFERENCE = "CE + KD"
DEFAULT = "CE + KD + Grad-CAM++ (default layer, closed form)"
CACHED = "CE + KD + Grad-CAM++ (default layer, teacher cache, float16)"


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux), 0 where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def saved_bytes(step_forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the unique storages autograd saves during one forward (+ map graph)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step_forward()
    loss.backward()
    return sum(storages.values())


def copied_step(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mode: str | None = None,
    channels_last: bool = False,
) -> tuple[Callable[[], torch.Tensor], Callable[[], None]]:
    """The default loss on copies of the networks, compiled with ``mode`` and/or in
    channels-last memory format: ``(forward, step)``."""
    distiller = ExplanationDistiller(copy.deepcopy(teacher), copy.deepcopy(student)).train()
    if channels_last:
        distiller.to(memory_format=torch.channels_last)
    if mode is not None:
        compile_distiller(distiller, mode)
    optimizer = torch.optim.SGD(distiller.student.parameters(), lr=0.01, momentum=0.9)

    def forward() -> torch.Tensor:
        return distiller(images, labels).loss

    def step() -> None:
        loss = forward()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm up; compile (and, for reduce-overhead, record the CUDA graphs)
        step()
    return forward, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher", default="wrn_40_2")
    parser.add_argument("--student", default="wrn_16_2")
    parser.add_argument(
        "--compile",
        nargs="*",
        default=[],
        metavar="MODE",
        help="torch.compile modes to add as rows (default, reduce-overhead, ...)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="add the default loss in channels-last"
    )
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    teacher = build_model(args.teacher, num_classes=10).to(device)
    student = build_model(args.student, num_classes=10).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    distillers = {
        name: ExplanationDistiller(teacher, student, **kw) for name, kw in VARIANTS.items()
    }
    for distiller in distillers.values():
        distiller.train()

    def ce_forward() -> torch.Tensor:
        return F.cross_entropy(student(images), labels)

    forwards: dict[str, Callable[[], torch.Tensor]] = {"CE (student only)": ce_forward}
    for name, distiller in distillers.items():
        forwards[name] = lambda d=distiller: d(images, labels).loss

    # The default loss with the teacher's outputs read from a memory-mapped float16 cache
    # (as a student of a comparison reads them) instead of a teacher forward.
    cached = distillers[DEFAULT]
    index = torch.randperm(4 * args.batch)[: args.batch]
    cache_dir = tempfile.TemporaryDirectory()
    with torch.no_grad():
        outputs = cached.teacher_outputs(images, labels)
    cache = TeacherCache.create(
        cache_dir.name,
        {"bench": True},
        epochs=1,
        num_samples=4 * args.batch,
        num_classes=10,
        map_shapes=[tuple(m.shape[1:]) for m in outputs.maps],
    )
    cache.write(0, index, outputs)
    forwards[CACHED] = lambda: cached(images, labels, teacher=cache.read(0, index, device)).loss

    def step(forward: Callable[[], torch.Tensor]) -> None:
        loss = forward()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    steps = {name: (lambda f=f: step(f)) for name, f in forwards.items()}
    for mode in args.compile:
        name = f"{DEFAULT}, torch.compile {mode}"
        forwards[name], steps[name] = copied_step(teacher, student, images, labels, mode=mode)
    if args.channels_last:
        name = f"{DEFAULT}, channels-last"
        forwards[name], steps[name] = copied_step(
            teacher, student, images, labels, channels_last=True
        )
    timings = measure_interleaved(steps, repeats=args.repeats, device=device)
    memory = {}
    for name, forward in forwards.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            memory[name] = saved_bytes(forward)
        except RuntimeError:  # saved-tensor hooks inside a compiled graph
            memory[name] = None
        if device.type == "cuda":
            memory[name] = (memory[name], torch.cuda.max_memory_allocated(device))
        optimizer.zero_grad(set_to_none=True)

    # Growth: resident memory after 10 and after 40 default steps.
    for _ in range(10):
        step(forwards[DEFAULT])
    rss_before = current_rss()
    for _ in range(30):
        step(forwards[DEFAULT])
    rss_after = current_rss()

    ref_time = timings[REFERENCE].median
    ref_mem = memory[REFERENCE][0] if device.type == "cuda" else memory[REFERENCE]
    ce_time = timings["CE (student only)"].median
    header = [
        "loss",
        "step time",
        f"time / {REFERENCE}",
        "time / CE (student only)",
        "saved for backward",
        "memory ratio",
    ]
    if device.type == "cuda":
        header.append("peak allocated")
    rows = []
    for name in forwards:
        saved = memory[name][0] if device.type == "cuda" else memory[name]
        row = [
            name,
            timings[name],
            f"{timings[name].median / ref_time:.3f}x",
            f"{timings[name].median / ce_time:.3f}x",
            "n/a" if saved is None else f"{saved / 2**20:.0f} MiB",
            "n/a" if saved is None else f"{saved / ref_mem:.3f}x",
        ]
        if device.type == "cuda":
            row.append(f"{memory[name][1] / 2**20:.0f} MiB")
        rows.append(row)
    print(
        f"## Training step, {args.teacher} -> {args.student}, batch {args.batch}, {device.type}\n"
    )
    print(machine() + "\n")
    print(table(header, rows))
    for mode in args.compile:
        compiled = timings[f"{DEFAULT}, torch.compile {mode}"].median
        print(
            f"\ntorch.compile {mode} / eager (default loss): {compiled / timings[DEFAULT].median:.3f}x"
        )
    if args.channels_last:
        fast = timings[f"{DEFAULT}, channels-last"].median
        print(
            f"\nchannels-last / default layout (default loss): {fast / timings[DEFAULT].median:.3f}x"
        )
    print(
        f"\nresident memory after 10 / 40 default steps: {rss_before / 2**20:.0f} / "
        f"{rss_after / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
