"""Ask the BentoML gateway for recommendations with `bentoml.SyncHTTPClient`.

python -m serving.clients.bentoml_http --url http://127.0.0.1:3000 --user 1 --k 5 --budget 5
"""

import argparse

import bentoml


def recommend(url: str, user_id: int, k: int, budget_ms: float) -> dict:
    with bentoml.SyncHTTPClient(url) as client:
        return client.recommend(user_id=user_id, k=k, latency_budget_ms=budget_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--user", type=int, default=1)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--budget", type=float, default=20.0, help="latency budget (ms)")
    args = parser.parse_args()
    answer = recommend(args.url, args.user, args.k, args.budget)
    for item in answer["items"]:
        print(f"{item['predicted_rating']:.2f}  {item['title']}")
    print(f"variant: {answer['variant']}  latency {answer['latency_ms']:.1f} ms  budget met: {answer['budget_met']}")


if __name__ == "__main__":
    main()
