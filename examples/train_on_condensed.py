"""Train a ConvNet on a condensed set with Ray Train and report its test accuracy: the downstream
use of a condensed set (fast architecture search or tuning on a few hundred samples).

    python jobs/condense.py --preset mnist5k-demo --output runs/demo
    python examples/train_on_condensed.py --condensed runs/demo --epochs 300

The formed samples come from ``Condensed.to_ray_dataset()`` (formed in Ray Data workers); a
``TorchTrainer`` runs --workers data-parallel workers of 1 CPU each (DDP, gloo); worker 0 tests
the network on the real test split of the set's dataset. docs/python.md has the API.
"""

from __future__ import annotations

import argparse
import tempfile

import ray
import ray.train
import ray.train.torch
import torch

import idc_ray
from idc_ray.data import load_dataset
from idc_ray.engine.training import Normalize
from idc_ray.models import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--condensed", required=True, help="a condensed set's folder (local or s3://)")
    parser.add_argument("--model", default="convnet3", help="test model (default convnet3)")
    parser.add_argument("--width", type=int, default=32, help="ConvNet width (default 32)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch per worker (default 64)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers, 1 CPU each (default 2)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    return parser.parse_args(argv)


def test_accuracy(model: torch.nn.Module, manifest: dict) -> float:
    """Top-1 on the real test split of the set's dataset, normalised as the set is."""
    data = manifest["config"]["data"]
    real = load_dataset(data["dataset"], data["data_uri"], split="test")
    x = Normalize(manifest["mean"], manifest["std"])(real.test_x.float() / 255)
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(part).argmax(1) for part in x.split(256)])
    return float((predicted == real.test_y).float().mean())


def train_loop(config: dict) -> None:
    """One Ray Train worker: its shard of the formed samples, DDP across the workers."""
    manifest = config["manifest"]
    c, size, _ = manifest["shape"]
    torch.manual_seed(config["seed"])
    model = ray.train.torch.prepare_model(build_model(config["model"], manifest["num_classes"], c, size,
                                                      width=config["width"]))
    optimiser = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9, weight_decay=5e-4)
    shard = ray.train.get_dataset_shard("train")
    for _ in range(config["epochs"]):
        model.train()
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], dtypes=torch.float32):
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"].long())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"loss": float(loss)})
        return
    network = getattr(model, "module", model)
    with tempfile.TemporaryDirectory() as folder:  # the trained network, as the run's checkpoint
        torch.save(network.state_dict(), f"{folder}/model.pt")
        ray.train.report({"loss": float(loss), "accuracy": test_accuracy(network, manifest)},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    if not ray.is_initialized():
        ray.init(address=args.address)
    condensed = idc_ray.load(args.condensed)
    trainer = ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={"manifest": condensed.manifest, "model": args.model, "width": args.width,
                           "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": 0},
        scaling_config=ray.train.ScalingConfig(num_workers=args.workers, use_gpu=False,
                                               resources_per_worker={"CPU": 1}),
        # formed before the workers start: a condensed set is small, and on a cluster whose CPUs
        # the workers fill, Ray Data would have none left to form it while they wait for it
        datasets={"train": condensed.to_ray_dataset().materialize()},
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="idc-ray-train-")),
    )
    accuracy = trainer.fit().metrics["accuracy"]
    print(f"{args.model} trained on {args.condensed} with {args.workers} Ray Train workers: "
          f"test accuracy {100 * accuracy:.2f}%")
    return accuracy


if __name__ == "__main__":
    main()
