"""``autotrans_train DATASET CONFIGURATION MODEL FOLD``: train one family on one fold (see documentation/training_engine.md)."""
from __future__ import annotations

import argparse
import sys

from autotrans.cli.common import run, setup_logging
from autotrans.errors import ConfigurationError
from autotrans.utils.devices import add_device_argument


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_train",
        description="Train a generator family on one fold of a preprocessed dataset. Defaults come from the "
        "plan; flags override them for this run and are recorded in the results folder (debug.json, checkpoints).")
    p.add_argument("dataset", help="dataset id or name (e.g. 3 or Dataset003_Name)")
    p.add_argument("configuration", help="plan configuration (e.g. 3d_fullres)")
    p.add_argument("model", help="model: regression, pix2pix, cyclegan, srgan, ldm, ldm_controlnet, bbdm, "
                   "flow_matching, or a shared stage: autoencoder (the latent models train it first when missing), ldm_prior "
                   "(ldm_controlnet's frozen base, likewise)")
    p.add_argument("fold", help="fold of splits_final.json (0..N-1) or 'all'")
    p.add_argument("-p", "--plans", default="autotransPlans", help="plans name (autotransPlans)")
    p.add_argument("--c", "--continue", dest="continue_training", action="store_true",
                   help="continue from the newest valid checkpoint of this fold")
    add_device_argument(p, "cuda")  # the same choices and checks as autotrans_predict
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (plan, else 1000)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per epoch (plan, else 250)")
    p.add_argument("--val_iterations", type=int, default=None,
                   help="validation batches per epoch (plan, else iterations // 5, at least 1, at most 50; 0: none)")
    p.add_argument("--batch_size", type=int, default=None, help="global batch size (plan's family section)")
    p.add_argument("-num_gpus", "--num_gpus", type=int, default=1,
                   help="processes for DistributedDataParallel (GPUs; with -device cpu: gloo processes)")
    p.add_argument("--no_compile", action="store_true", help="disable torch.compile (on by default on CUDA)")
    p.add_argument("-pretrained_weights", "--pretrained_weights", default=None,
                   help="initialise the networks from this checkpoint (ignored with --c)")
    p.add_argument("--val", dest="only_validation", action="store_true",
                   help="only run the final validation of a trained fold")
    p.add_argument("--val_best", action="store_true", help="final validation with checkpoint_best.pth")
    p.add_argument("--disable_val_tta", action="store_true", help="final validation without mirror TTA")
    p.add_argument("--skip_final_validation", action="store_true",
                   help="no whole-volume validation after training (e.g. when a benchmark predicts those cases)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    p.add_argument("-num_workers", "--num_workers", type=int, default=None,
                   help="data augmentation worker processes (env autotrans_n_proc_DA, else CPUs - 1; 0: in-process)")
    p.add_argument("--no_mirroring", action="store_true",
                   help="no mirror augmentation (e.g. lateralised anatomy); checkpoints then record no mirror axes, "
                   "so inference skips mirror TTA")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--gpu_augmentation", dest="gpu_augmentation", action="store_true", default=None,
                     help="rotation/scaling, mirroring and intensity augmentation on the training device, workers only "
                     "read patches (the default on CUDA: documentation/performance.md)")
    aug.add_argument("--cpu_augmentation", dest="gpu_augmentation", action="store_false",
                     help="augment in the CPU workers (the default on CPU and MPS)")
    p.add_argument("--augmentation_pipeline", choices=("torch", "batchgenerators"), default="torch",
                   help="CPU augmentation: torch (trilinear, default, faster) or batchgenerators v1 (cubic)")
    p.add_argument("--save_every", type=int, default=50, help="write checkpoint_latest.pth every N epochs (50)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="family hyperparameter override, repeatable (e.g. -o lambda_l1=50)")
    p.add_argument("-perceptual_weights", "--perceptual_weights", default=None, metavar="PATH",
                   help="SRGAN, regression, autoencoder: user-supplied 3D feature network for the perceptual loss "
                   "(TorchScript or .pt2); default: SRGAN discriminator features, none for the others (same as "
                   "-o perceptual_weights=PATH)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _main(args: argparse.Namespace) -> int:
    from autotrans.training.augment import AugmentationSettings
    from autotrans.training.run import run_training
    from autotrans.training.settings import TrainSettings, parse_overrides

    for flag in ("epochs", "iterations", "batch_size", "save_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigurationError(f"--{flag} {value}: must be >= 1")
    for flag in ("val_iterations", "num_workers"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise ConfigurationError(f"--{flag} {value}: must be >= 0")
    fold = args.fold.strip()
    if fold != "all" and not fold.isdigit():
        raise ConfigurationError(f"fold {fold!r}: use a number (0, 1, ...) or 'all'")
    settings = TrainSettings(
        dataset=args.dataset, configuration=args.configuration, model=args.model, fold=fold, plans_name=args.plans,
        device=args.device, num_epochs=args.epochs, iterations=args.iterations, val_iterations=args.val_iterations,
        batch_size=args.batch_size, num_gpus=args.num_gpus, compile=False if args.no_compile else None,
        pretrained_weights=args.pretrained_weights, continue_training=args.continue_training,
        only_validation=args.only_validation, val_best=args.val_best, val_tta=not args.disable_val_tta,
        final_validation=not args.skip_final_validation,
        seed=args.seed, num_workers=args.num_workers, save_every=args.save_every,
        overrides={**parse_overrides(args.override),
                   **({"perceptual_weights": args.perceptual_weights} if args.perceptual_weights else {})},
        gpu_augmentation=args.gpu_augmentation,
        augmentation=AugmentationSettings(mirror=not args.no_mirroring, pipeline=args.augmentation_pipeline))
    run_training(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    return run("autotrans_train", lambda: _main(args))


if __name__ == "__main__":
    sys.exit(main())
