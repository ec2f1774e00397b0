"""The GPU check's speed steps: ``benchmarks/run.py`` on the Llama-1B architecture at max length 2048, in
bf16, HF Trainer against tuneforge unpacked and packed on the same batches; tokens/s, MFU, and peak GPU
memory against ``tuneforge plan``, judged against issue 28's targets on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

from outcome import FLASH_ATTN_MISSING, Failed, needs_cuda_and, require
from run import plan_estimate
from runs import BENCHMARKS, PLAN_TOLERANCE, SIZES, child_env, log_tail, plan_target, threads, timeout, timeout_reason

#: the speed runs' loss check (benchmarks/run.py --tolerance): in bf16 HF Trainer's full logits and tuneforge's
#: loss round differently, and over 96 steps the runs drift apart; the first steps' losses (printed) show the
#: rounding alone, and the batches themselves are checked exactly (digests)
SPEED_LOSS_TOLERANCE = 0.1
#: targets of the GPU run (issue 28): MFU of the packed Llama-1B run, tuneforge against HF Trainer
MFU_TARGET, HF_RATIO_TARGET = 0.35, 1.0


def speed(context, attention: str, name: str) -> dict:
    sizes = SIZES[context.mode]
    out = context.work / name
    command = [sys.executable, str(BENCHMARKS / "run.py"), "--model", str(context.folders["llama_1b"]),
               "--model-dtype", "bfloat16", "--attn-implementation", attention, "--precision", "bf16-mixed",
               "--device", context.device, "--limit", "peak", "--max-length", str(sizes["long_length"]),
               "--batch-size", str(sizes["long_batch"]), "--steps", str(sizes["speed_steps"]),
               "--warmup", str(sizes["speed_warmup"]), "--repeats", "1", "--records", str(sizes["speed_records"]),
               "--systems", "hf_trainer,tuneforge", "--variants", "packing", "--threads", str(threads(context)),
               "--tolerance", str(SPEED_LOSS_TOLERANCE), "--out", str(out)]
    if not context.tokenizer:
        command += ["--max-field-tokens", "12"]
    log = context.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        try:
            completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env(context),
                                       cwd=str(BENCHMARKS.parent), timeout=timeout(context, 2))
        except subprocess.TimeoutExpired:
            raise Failed(f"benchmarks/run.py stopped after {timeout(context, 2):.0f} s ({timeout_reason(context, 2)})",
                         output=log_tail(log)) from None
    results_path = out / "results.json"
    require(completed.returncode == 0 and results_path.is_file(),
            f"benchmarks/run.py exited {completed.returncode}", output=log_tail(log))
    results = json.loads(results_path.read_text())
    summary, limit = results["summary"], results["gpu_limit"]
    rows = {key: {"tokens_per_s": entry["tokens_per_s"], "mfu": entry.get("of_limit"),
                  "peak_gpu_mib": entry.get("peak_gpu_mib"),
                  "plan_mib": plan_estimate(results["spec"], key)}
            for key, entry in summary.items()}
    details = {"rows": rows, "device_name": limit["device_name"], "published_peak": limit["published_peak"],
               "measured_peak": limit["measured_peak"], "check": results.get("check"), "notes": results.get("notes")}
    packed = rows.get("tuneforge-packing", {})
    ratio = (rows["tuneforge"]["tokens_per_s"] / rows["hf_trainer"]["tokens_per_s"]
             if "tuneforge" in rows and "hf_trainer" in rows else None)
    mfu = (packed.get("mfu") or {}).get("published")
    result = {"details": details, "markdown": results.get("markdown", ""),
              "summary": f"tuneforge {rows.get('tuneforge', {}).get('tokens_per_s', 0):.0f}, packed "
                         f"{packed.get('tokens_per_s', 0):.0f}, HF Trainer "
                         f"{rows.get('hf_trainer', {}).get('tokens_per_s', 0):.0f} real tokens/s"
                         + (f"; x{ratio:.2f} HF Trainer" if ratio else "")
                         + (f"; packed MFU {mfu:.1%}" if mfu is not None else "")}
    if context.device == "cuda":
        result["targets"] = [
            {"target": f"MFU >= {MFU_TARGET:.0%}, Llama-1B packed, bf16 ({attention})",
             "measured": f"{mfu:.1%}" if mfu is not None else "no published peak for this GPU",
             "met": mfu is not None and mfu >= MFU_TARGET},
            {"target": f"tuneforge >= {HF_RATIO_TARGET}x HF Trainer on the same batches ({attention})",
             "measured": f"{ratio:.2f}x" if ratio else "-", "met": ratio is not None and ratio >= HF_RATIO_TARGET},
            *[{**plan_target(row["peak_gpu_mib"], row["plan_mib"]), "target": f"{key}: peak GPU memory within "
               f"{PLAN_TOLERANCE:.0%} of tuneforge plan"} for key, row in rows.items() if key.startswith("tuneforge")]]
    return result


def speed_sdpa(context) -> dict:
    return speed(context, "sdpa", "speed-sdpa")


def speed_flash_attention(context) -> dict:
    needs_cuda_and(context, "FlashAttention-2", "flash_attn", FLASH_ATTN_MISSING)
    return speed(context, "flash_attention_2", "speed-flash-attention-2")
