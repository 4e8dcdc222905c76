"""Judging an instruction-following model (chapter 7): simple automatic scores of its responses against the
reference outputs, and an optional judge model behind an OpenAI-compatible endpoint (the book asks Llama 3
through Ollama)."""

import json
import re
import string
import urllib.error
import urllib.request
from collections import Counter


def _words(text: str) -> list[str]:
    """Lower-cased words without punctuation: what exact match and F1 compare."""
    return text.lower().translate(str.maketrans("", "", string.punctuation)).split()


def word_f1(response: str, reference: str) -> float:
    """F1 of the words two texts share (SQuAD's overlap score): 1 for the same words, 0 for none in common."""
    predicted, expected = _words(response), _words(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def response_scores(responses: list[str], references: list[str]) -> dict:
    """Mean exact match (same words, ignoring case and punctuation) and mean word F1."""
    if len(responses) != len(references) or not responses:
        raise ValueError(f"Need as many responses as references (and some): got {len(responses)} and "
                         f"{len(references)}.")
    return {
        "exact_match": sum(_words(r) == _words(e) for r, e in zip(responses, references)) / len(responses),
        "word_f1": sum(word_f1(r, e) for r, e in zip(responses, references)) / len(responses),
    }


class Judge:
    """Scores responses 0-100 with a chat model behind an OpenAI-compatible endpoint, for example
    Ollama's `http://localhost:11434/v1` serving `llama3` (the book's judge)."""

    def __init__(self, url: str, model: str = "llama3", api_key: str | None = None, timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def check(self) -> None:
        """Fail before training, not after, when the endpoint does not answer."""
        self._request("/models")

    def score(self, record: dict, response: str) -> int:
        instruction = record["instruction"] + (f"\n\nInput:\n{record['input']}" if record.get("input") else "")
        question = (
            f"Instruction:\n{instruction}\n\nReference answer:\n{record['output']}\n\n"
            f"Answer to grade:\n{response}\n\n"
            "Grade the answer against the reference on a scale of 0 (wrong or missing) to 100 (as good as the "
            "reference). Reply with the number alone."
        )
        reply = self._request("/chat/completions", {
            "model": self.model, "temperature": 0, "messages": [{"role": "user", "content": question}],
        })
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"The judge at {self.url} sent a reply that is not a chat completion: "
                             f"{reply!r:.200}") from None
        number = re.search(r"\d+", text)
        if number is None:
            raise ValueError(f"The judge at {self.url} replied {text!r:.100} instead of a score from 0 to 100.")
        return min(int(number.group()), 100)

    def _request(self, path: str, payload: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read().decode())
        except urllib.error.HTTPError as error:
            raise ValueError(f"The judge at {self.url} answered {path} with HTTP {error.code} "
                             f"{error.reason}.") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ValueError(f"Cannot reach the judge at {self.url}: {reason}. Start it (for example `ollama serve`) "
                             "or leave judge_url unset.") from None
        except json.JSONDecodeError:
            raise ValueError(f"The judge at {self.url} answered {path} with something that is not JSON.") from None
