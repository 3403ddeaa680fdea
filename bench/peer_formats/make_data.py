"""Write the demo's task (bench/README.md "Peer formats") as verl writes a dataset: parquet rows
with data_source, chat-message prompt (instruction included), ability, reward_model.ground_truth and
extra_info, built with pyarrow from forkrl's generator (the same rows `make demo` trains on).

Usage: python bench/peer_formats/make_data.py OUT_DIR  ->  OUT_DIR/train.parquet, OUT_DIR/test.parquet
"""
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from launch.data import synthetic_arithmetic  # noqa: E402

INSTRUCTION = "Put the final answer in \\boxed{}."


def verl_rows(rows, split):
    return [{"data_source": "forkrl/arithmetic", "prompt": [{"role": "user", "content": f"{r['prompt']} {INSTRUCTION}"}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": r["answer"]},
             "extra_info": {"split": split, "index": i}} for i, r in enumerate(rows)]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    kinds = ["add", "sub", "word"]  # configs/demo.yaml's task
    train = synthetic_arithmetic(600, 9, 0, kinds)
    seen = {r["prompt"] for r in train}
    test = [r for r in synthetic_arithmetic(128 * 20, 9, 1, kinds) if r["prompt"] not in seen][:128]
    pq.write_table(pa.Table.from_pylist(verl_rows(train, "train")), out / "train.parquet")
    pq.write_table(pa.Table.from_pylist(verl_rows(test, "test")), out / "test.parquet")
    print(out / "train.parquet", out / "test.parquet")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
