"""Derive the agentic study-search data from the single-turn task's (../trialpanorama-study-search).

Same reviews, relevant trials and reference queries; the instruction now offers the
`pubmed_search` tool and asks for the final query between <answer> and </answer> (the prompt no
longer ends inside the answer tag). Reads train.parquet with pyarrow (not needed at run time):
    python make_data.py
"""
import json
import pathlib

import pyarrow.parquet as pq

SRC = pathlib.Path(__file__).resolve().parent.parent / "trialpanorama-study-search" / "data"
OUT = pathlib.Path(__file__).resolve().parent / "data"
OLD = ("Write a PubMed search query that retrieves the randomized trials eligible for this review. "
       "Return only the query between <answer> and </answer>, with no reasoning.")
NEW = ("Find the randomized trials eligible for this review. You may call the pubmed_search tool "
       "to try a query and read its top hits, and refine the query until the hits look right. "
       "Then give your final PubMed query between <answer> and </answer>.")


def convert(row, split):
    text = row["prompt"][0]["content"]
    assert OLD in text and text.endswith("\n\n<answer>"), text[:200]
    text = text.replace(OLD, NEW)[: -len("\n\n<answer>")]
    ref = row["extra_info"]["reference_query"]
    extra = dict(row["extra_info"], split=split, reference_query="<answer>" + ref)
    return {"data_source": row["data_source"].replace("study_search", "study_search_agentic"),
            "prompt": [{"role": "user", "content": text}], "ability": row["ability"],
            "reward_model": row["reward_model"], "extra_info": extra}


def main():
    OUT.mkdir(exist_ok=True)
    splits = {"train": pq.read_table(SRC / "train.parquet").to_pylist()}
    for split in ("validation", "test"):
        splits[split] = [json.loads(l) for l in (SRC / f"{split}.jsonl").read_text().splitlines() if l.strip()]
    for split, rows in splits.items():
        with open(OUT / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(convert(row, split)) + "\n")
        print(split, len(rows))


if __name__ == "__main__":
    main()
