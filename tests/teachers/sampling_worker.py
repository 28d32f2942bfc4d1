"""A sampling run for the kill-and-resume test: CachedTeacher over the OpenAI backend, artifact written as it goes.

python sampling_worker.py BASE_URL CACHE ARTIFACT COUNT N CONCURRENCY
"""

from __future__ import annotations

import json
import os
import sys

from mwp.teachers.base import SamplingParams, TeacherRequest
from mwp.teachers.completion_cache import CachedTeacher
from mwp.teachers.openai_compat import OpenAITeacher


def main() -> None:
    base_url, cache, artifact = sys.argv[1:4]
    count, n, concurrency = (int(x) for x in sys.argv[4:7])
    inner = OpenAITeacher("echo", base_url=base_url, api_key_required=False, concurrency=concurrency)
    requests = [TeacherRequest(f"p{i}", f"Question {i}: how many apples?") for i in range(count)]
    partial = artifact + ".partial"
    with CachedTeacher(inner, cache) as teacher, open(partial, "w", encoding="utf-8") as out:
        for response in teacher.generate(requests, SamplingParams(n=n, temperature=0.7)):
            row = {"problem_id": response.request.problem_id, "texts": [c.text for c in response.completions]}
            out.write(json.dumps(row) + "\n")
            out.flush()
    os.replace(partial, artifact)
    print(json.dumps({"inner_calls": inner.usage.calls}))


if __name__ == "__main__":
    main()
