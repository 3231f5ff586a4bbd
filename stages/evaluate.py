"""DVC stage `evaluate`: held-out loss, samples for val prompts, adherence, distribution
metrics, VAE reconstructions, and report.html (overview first). The run itself, top to
bottom, is `sdlab.evaluate.run`."""

from pathlib import Path

from sdlab.evaluate import EvaluatePaths, run
from sdlab.stage import parse_args, stage

PATHS = ("latents", "shards", "pipeline", "curves", "train_stats", "out", "raw", "dedupe")


@stage("evaluate")
def main(args, params):
    run(params, EvaluatePaths(*(Path(getattr(args, name)) for name in PATHS)))


if __name__ == "__main__":
    main(parse_args(__doc__, *PATHS))
