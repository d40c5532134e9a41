"""Time-series forecasting with a fused_rnn.LSTM: the next 12 values of a noisy seasonal series.

The series is a daily cycle (period 24) plus a slower one (period 97) plus Gaussian noise. The LSTM
reads a window of the last 48 values and its final hidden state is mapped to the 12 values that
follow (many-to-one, with a 12-value output). It is compared with two naive forecasts: repeating the
last value, and the seasonal naive one (the value one period, 24 steps, earlier). No forecast can
beat the noise's variance, which is printed as the floor.

    python examples/forecast.py [--epochs 8] [--backend torch] [--figure examples/figures/forecast.png]
"""

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

import fused_rnn

FIGURE = Path(__file__).parent / "figures" / "forecast.png"
PERIOD = 24


def make_series(length: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float32)
    seasonal = torch.sin(2 * math.pi * t / PERIOD) + 0.5 * torch.sin(2 * math.pi * t / 97)
    return seasonal + noise * torch.randn(length, generator=generator)


def windows(series: torch.Tensor, window: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (past window, future horizon) pair in the series: (N, window) and (N, horizon)."""
    pairs = series.unfold(0, window + horizon, 1)
    return pairs[:, :window], pairs[:, window:]


def recurrent(name: str, backend: str, *args, **kwargs) -> nn.Module:
    """fused_rnn.<name> on `backend`, or plain torch.nn.<name> for backend "torch" (the baseline)."""
    if backend == "torch":
        return getattr(nn, name)(*args, **kwargs)
    return getattr(fused_rnn, name)(*args, backend=backend, **kwargs)


class Forecaster(nn.Module):
    def __init__(self, hidden_size: int, layers: int, horizon: int, backend: str):
        super().__init__()
        self.lstm = recurrent("LSTM", backend, 1, hidden_size, layers, batch_first=True)
        self.head = nn.Linear(hidden_size, horizon)

    def forward(self, past):
        """past (B, window) -> forecast (B, horizon), from the last layer's final hidden state."""
        _, (h_n, _) = self.lstm(past.unsqueeze(-1))
        return self.head(h_n[-1])


def plot(path: Path, test_series, origins, forecasts, seasonal, horizon_mse: dict, noise_variance: float):
    figure = Figure(figsize=(14, 4.5), layout="tight")
    left, right = figure.subplots(1, 2, width_ratios=[2, 1])
    steps = torch.arange(len(test_series))
    left.plot(steps, test_series, color="0.6", lw=1, label="test series")
    for i, (origin, forecast, naive) in enumerate(zip(origins, forecasts, seasonal)):
        ahead = torch.arange(origin, origin + len(forecast))
        left.plot(ahead, naive, color="tab:orange", lw=1, ls="--", label="seasonal naive" if i == 0 else None)
        left.plot(ahead, forecast, color="tab:blue", lw=2, label="LSTM forecast" if i == 0 else None)
    left.set(xlabel="time step (test set)", ylabel="value", title="12-step forecasts from successive origins")
    left.legend(loc="upper right", fontsize=8)
    for name, mse in horizon_mse.items():
        right.plot(range(1, len(mse) + 1), mse, marker="o", ms=3, label=name)
    right.axhline(noise_variance, color="k", ls=":", label="noise variance (floor)")
    right.set(xlabel="steps ahead", ylabel="test MSE", title="Error by horizon", yscale="log")
    right.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "reference", "torch"])
    parser.add_argument("--length", type=int, default=3000, help="points in the series; the last fifth is the test set")
    parser.add_argument("--noise", type=float, default=0.2, help="standard deviation of the noise")
    parser.add_argument("--window", type=int, default=48, help="past values the model reads")
    parser.add_argument("--horizon", type=int, default=12, help="future values it forecasts")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.horizon > PERIOD or args.window < PERIOD:
        parser.error(f"the seasonal naive forecast needs --horizon <= {PERIOD} <= --window (the period)")

    torch.manual_seed(args.seed)
    series = make_series(args.length, args.noise, torch.Generator().manual_seed(args.seed))
    split = args.length * 4 // 5
    # Scaled with the training part's statistics only, so nothing about the test set leaks in.
    mean, std = series[:split].mean(), series[:split].std()
    scaled = (series - mean) / std
    train_x, train_y = windows(scaled[:split], args.window, args.horizon)
    test_x, test_y = windows(scaled[split - args.window :], args.window, args.horizon)

    model = Forecaster(args.hidden_size, args.layers, args.horizon, args.backend).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"{len(train_x)} training and {len(test_x)} test windows; model: {model.lstm} on {args.device}")
    for epoch in range(1, args.epochs + 1):
        model.train()
        start, total = time.perf_counter(), 0.0
        for index in torch.randperm(len(train_x)).split(args.batch_size):
            loss = F.mse_loss(model(train_x[index].to(args.device)), train_y[index].to(args.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        print(f"epoch {epoch}: train MSE (scaled) {total / len(train_x):.4f}  ({time.perf_counter() - start:.1f} s)")

    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x.to(args.device)).cpu() for x in test_x.split(256)])
    unscale = lambda values: values * std + mean
    truth = unscale(test_y)
    forecasts = {
        "LSTM": unscale(predicted),
        "last value": unscale(test_x[:, -1:]).expand_as(truth),
        "seasonal naive": unscale(test_x[:, args.window - PERIOD : args.window - PERIOD + args.horizon]),
    }
    horizon_mse = {name: (forecast - truth).square().mean(0) for name, forecast in forecasts.items()}
    mse = {name: per_step.mean().item() for name, per_step in horizon_mse.items()}
    print(f"test MSE over {args.horizon} steps ahead (noise variance, the floor: {args.noise**2:.4f}):")
    for name, value in mse.items():
        print(f"  {name:15s} {value:.4f}")

    origins = range(0, min(len(truth), 8 * args.horizon), args.horizon)
    plot(
        args.figure,
        series[split : split + origins[-1] + args.horizon],
        origins,
        [forecasts["LSTM"][o] for o in origins],
        [forecasts["seasonal naive"][o] for o in origins],
        horizon_mse,
        args.noise**2,
    )
    print(f"figure: {os.path.relpath(args.figure)}")
    return {"mse": mse, "noise_variance": args.noise**2, "figure": args.figure}


if __name__ == "__main__":
    main()
