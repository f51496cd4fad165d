"""CUDA-only checks: mixed precision and deterministic runs.  Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from .test_optimization_modes import Classifier, YieldGAN, make_loader, real_loader, trainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cuda(precision):
    module = Classifier()
    t = trainer(accelerator="cuda", precision=precision)
    torch.manual_seed(123)
    t.fit(module, make_loader())
    assert next(module.parameters()).is_cuda
    assert sum(module.losses[-6:]) < sum(module.losses[:6])
    if precision == "16-mixed":
        assert t.precision.scaler is not None and t.precision.scaler.get_scale() > 0


def test_deterministic_cuda_runs_are_bit_identical():
    results = []
    for _ in range(2):
        module = YieldGAN()
        t = trainer(accelerator="cuda", deterministic=True, precision="bf16-mixed")
        torch.manual_seed(123)
        t.fit(module, real_loader())
        results.append([p.detach().cpu() for p in module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


# -- exact resume on one GPU (deterministic algorithms) -----------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_kill_9_anywhere_on_cuda_resumes_bit_identical(tmp_path, precision):
    """The kill -9 run of tests/test_kill_resume.py (accumulation over 3 batches among its features) on a GPU."""
    import sys
    from pathlib import Path

    from statemachine_trainer.testing import assert_kill_resume_exact

    script = Path(__file__).parent / "_kill_classifier.py"
    command = [sys.executable, str(script), ".", "--accelerator", "cuda", "--precision", precision]
    for checkpoint in (4, 11):  # 4: inside the first accumulation window's aftermath; 11: past a mid-epoch validation
        assert_kill_resume_exact(command, tmp_path / f"at-{checkpoint}", checkpoint, delay=0.005)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize(("hook", "call"), [("on_before_optimizer_step", 3), ("on_after_backward", 2)],
                         ids=["between-two-optimizers", "mid-accumulation"])
def test_resume_between_optimizers_and_mid_accumulation_on_cuda(tmp_path, precision, hook, call):
    from statemachine_trainer import Trainer
    from statemachine_trainer.data import ResumableLoader
    from statemachine_trainer.testing import assert_resume_exact

    def make_trainer(callbacks):
        return Trainer(accelerator="cuda", precision=precision, deterministic=True, max_epochs=2, seed=3,
                       accumulate_grad_batches=2 if hook == "on_after_backward" else 1, enable_progress_bar=False,
                       logger=False, enable_checkpointing=False, callbacks=callbacks)

    module = YieldGAN if hook == "on_before_optimizer_step" else Classifier
    data = real_loader if module is YieldGAN else make_loader
    assert_resume_exact(module, make_trainer, lambda: (ResumableLoader(data(), seed=1),), hook, call, tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for NCCL")
def test_ddp_on_two_gpus_runs_under_torchrun(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    digits = Path(__file__).parents[1] / "examples" / "digits.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(digits), "--strategy", "ddp", "--epochs", "3", "--root", "run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("val_acc=")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for NCCL")
def test_manual_gan_on_two_gpus_syncs_both_backwards(tmp_path):
    """NCCL and DDP's loss gate: manual optimization, two backwards per step; both ranks end equal."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "_ddp_gan.py"
    done = subprocess.run([sys.executable, str(script), "manual"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [path.read_text() for path in sorted(tmp_path.glob("rank-*.txt"))]
    assert len(digests) == 2 and digests[0] == digests[1]


# -- FSDP2 (strategy="fsdp") on GPUs --------------------------------------------------------------------------
def test_fsdp_world_of_one_on_cuda_resumes_mid_window_bit_identical(tmp_path):
    """NCCL with one rank, parameters DTensors on the GPU, deterministic algorithms: a checkpoint inside an
    accumulation window (FSDP's held gradients on the GPU) resumes to the whole run's weights bit for bit."""
    from .test_fsdp import resume_mid_window_exactly

    resume_mid_window_exactly(tmp_path, accelerator="cuda", deterministic=True)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for NCCL")
def test_fsdp_on_two_gpus_killed_anywhere_resumes_bit_identical(tmp_path):
    """examples/digits.py --strategy fsdp on 2 GPUs (NCCL), killed after its 3rd checkpoint, resumed: bit-identical."""
    import sys
    from pathlib import Path

    from statemachine_trainer.testing import assert_kill_resume_exact

    digits = Path(__file__).parents[1] / "examples" / "digits.py"
    command = [sys.executable, str(digits), "--root", ".", "--checkpoint-every", "4", "--seed", "1", "--epochs", "2",
               "--strategy", "fsdp", "--devices", "2"]
    assert_kill_resume_exact(command, tmp_path, 3, delay=0.01)
