"""eval.py: sliding-window perplexity and HellaSwag, each checked against a computation with transformers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request

import pytest
import torch
import torch.nn.functional as F

from gptlit.cli import eval as eval_py
from gptlit.core.tokenizer import encode
from gptlit.errors import UserError, find_user_error
from gptlit.evaluation import hellaswag
from gptlit.evaluation.perplexity import sliding_windows
from tests.conftest import ROOT, compose_config, find_verdict, tiny_hf_gpt2


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    return folder, tiny_hf_gpt2(folder)


def run_eval(run_dir, *overrides) -> dict:
    cfg = compose_config(f"run_dir={run_dir}", "progress=false", *overrides, config="eval")
    try:
        eval_py.run(cfg)
    except Exception as err:
        raise find_user_error(err) or err
    return json.loads((run_dir / "eval.json").read_text())


@torch.no_grad()
def transformers_perplexity(hf, tokens: list[int], window: int, stride: int) -> tuple[float, int]:
    """Hugging Face's recipe for the perplexity of fixed-length models ("Perplexity of fixed-length models" in
    the transformers docs), with windows of `window` inputs: every `stride` tokens a window of window+1 tokens,
    scoring only the tokens no earlier window scored."""
    ids_all = torch.tensor(tokens)
    nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + window + 1, len(tokens))
        ids = ids_all[begin:end]
        losses = F.cross_entropy(hf(ids[None, :-1]).logits[0], ids[1:], reduction="none").double()
        new = end - max(prev_end, 1)
        nll += losses[-new:].sum().item()
        scored += new
        prev_end = end
        if end == len(tokens):
            break
    return nll / scored, scored


def text_splits(path) -> tuple[list[int], list[int]]:
    text = path.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))  # the book's 90/10 character split, as data=text splits
    return encode(text[:cut]), encode(text[cut:])


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "start.txt"
    path.write_text(find_verdict().read_text(encoding="utf-8")[:1500], encoding="utf-8")
    return path


@pytest.mark.parametrize("split,window,stride,batch", [("val", 32, 32, 8), ("val", 32, 20, 5), ("all", 64, 48, 3)])
def test_perplexity_equals_transformers_on_the_same_windows(tmp_path, hf_folder, short_text, split, window, stride, batch):
    folder, hf = hf_folder
    text = find_verdict() if split == "val" else short_text  # The Verdict's val split; all of a short text
    train, val = text_splits(text)
    tokens = val if split == "val" else train + val
    expected_loss, expected_tokens = transformers_perplexity(hf, tokens, window, stride)
    report = run_eval(tmp_path, f"pretrained={folder}", f"data.path={text}", f"split={split}",
                      f"data.context_length={window}", f"data.stride={stride}", f"data.batch_size={batch}")
    assert report["tokens"] == expected_tokens == len(tokens) - 1  # every token after the first, once
    assert report["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert report["perplexity"] == pytest.approx(torch.tensor(expected_loss).exp().item(), rel=1e-4)
    assert report["source"] == str(folder) and report["data"]["split"] == split


def test_perplexity_reads_the_textfiles_corpus_split_by_tokens(tmp_path, hf_folder, short_text):
    folder, hf = hf_folder
    corpus = tmp_path / "books"
    corpus.mkdir()
    (corpus / "start.txt").write_text(short_text.read_text(encoding="utf-8"), encoding="utf-8")
    tokens = encode(short_text.read_text(encoding="utf-8"))
    val = tokens[int(0.9 * len(tokens)):]  # data=textfiles splits the corpus's tokens 90/10
    report = run_eval(tmp_path / "run", f"pretrained={folder}", "data=textfiles", f"data.path={corpus}",
                      f"data.cache_dir={tmp_path / 'cache'}", "data.progress=false", "data.context_length=16")
    expected_loss, expected_tokens = transformers_perplexity(hf, val, 16, 16)
    assert report["tokens"] == expected_tokens and report["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_windows_score_every_token_once_with_the_most_context_the_stride_allows():
    windows = sliding_windows(n_tokens=11, window=4, stride=3)
    # (first input, inputs, scored targets): targets are the tokens 1..10
    assert [(w.start, w.length, w.scored) for w in windows] == [(0, 4, 4), (3, 4, 3), (6, 4, 3)]
    assert sum(w.scored for w in sliding_windows(1000, 64, 17)) == 999
    with pytest.raises(UserError, match=r"data.stride \(5\) exceeds the window length \(4\)"):
        sliding_windows(11, 4, 5)


def test_null_context_uses_the_models_and_a_longer_one_is_refused(tmp_path, hf_folder):
    folder, hf = hf_folder
    _, val = text_splits(find_verdict())
    report = run_eval(tmp_path, f"pretrained={folder}", f"data.path={find_verdict()}")
    assert report["settings"]["window"] == 64
    assert report["loss"] == pytest.approx(transformers_perplexity(hf, val, 64, 64)[0], rel=1e-4)
    with pytest.raises(UserError, match="data.context_length=128 exceeds the model's context of 64 tokens"):
        run_eval(tmp_path, f"pretrained={folder}", f"data.path={find_verdict()}", "data.context_length=128")


def test_precision_is_fp32_unless_asked(tmp_path, hf_folder):
    folder, _ = hf_folder
    fp32 = run_eval(tmp_path, f"pretrained={folder}", f"data.path={find_verdict()}")
    bf16 = run_eval(tmp_path, f"pretrained={folder}", f"data.path={find_verdict()}", "precision=bf16-mixed")
    assert fp32["precision"] == "32-true" and bf16["precision"] == "bf16-mixed"
    assert bf16["loss"] != fp32["loss"] and bf16["loss"] == pytest.approx(fp32["loss"], rel=1e-2)


# --- HellaSwag ---------------------------------------------------------------------------------------------

ITEMS = [
    ("A man is sitting on a roof. he", ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                        "is holding a rubik's cube.", "starts pulling up roofing on a roof."]),
    ("A woman is outside with a bucket and a dog. The dog", ["is running around trying to avoid a bath.",
        "gets into a bath tub.", "gets the dog wet, then it runs away again.", "gets into the bath tub with the dog."]),
    ("Making a cake: The baker", ["mixes flour, sugar and eggs in a large bowl and stirs until the batter is smooth.",
        "eats.", "paints the fence blue.", "takes a nap under the table while the oven heats up slowly."]),
    ("Two boys play chess in a park. One of them", ["moves a knight.", "flies away.", "laughs and tips over the king.",
        "swims."]),
    ("A chef sharpens a knife. She then", ["slices the onions thinly.", "slices.", "goes to the moon on a rocket.",
        "sings the national anthem loudly to the vegetables on the board."]),
]


@torch.no_grad()
def transformers_hellaswag(hf, items) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean ending losses per item, computed as build-nanogpt's hellaswag.py does with transformers:
    four rows of context + " " + ending padded with zeros, losses of the shifted tokens under the ending mask."""
    sums, means = [], []
    for ctx, endings in items:
        ctx_tokens = encode(ctx)
        rows = [ctx_tokens + encode(" " + ending) for ending in endings]
        masks = [[0] * len(ctx_tokens) + [1] * (len(row) - len(ctx_tokens)) for row in rows]
        width = max(len(row) for row in rows)
        tokens = torch.tensor([row + [0] * (width - len(row)) for row in rows])
        mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
        logits = hf(tokens).logits
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view(4, -1)
        total = (losses * mask[:, 1:]).sum(dim=1)
        sums.append(total)
        means.append(total / mask[:, 1:].sum(dim=1))
    return torch.stack(sums), torch.stack(means)


def write_hellaswag(path, items, labels):
    with open(path, "w") as f:
        for i, ((ctx, endings), label) in enumerate(zip(items, labels)):
            ctx_a, _, ctx_b = ctx.rpartition(". ")
            f.write(json.dumps({"ind": i, "activity_label": "Test", "ctx_a": ctx_a + ".", "ctx_b": ctx_b, "ctx": ctx,
                                "split": "val", "split_type": "indomain", "label": label, "endings": endings,
                                "source_id": f"test~{i}"}) + "\n")


@pytest.fixture(scope="module")
def hellaswag_file(hf_folder, tmp_path_factory):
    _, hf = hf_folder
    sums, means = transformers_hellaswag(hf, ITEMS)
    # Labels such that the two rules disagree somewhere: right by the summed loss for the first items, by the
    # mean loss for the others.
    picks = torch.cat([sums[:3].argmin(dim=1), means[3:].argmin(dim=1)])
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    write_hellaswag(path, ITEMS, picks.tolist())
    expected = {
        "acc": (sums.argmin(dim=1) == picks).double().mean().item(),
        "acc_norm": (means.argmin(dim=1) == picks).double().mean().item(),
        "items": len(ITEMS),
    }
    return path, sums, means, expected


def test_hellaswag_equals_the_build_nanogpt_rule_with_transformers(tmp_path, hf_folder, hellaswag_file):
    folder, _ = hf_folder
    path, sums, means, expected = hellaswag_file
    report = run_eval(tmp_path, f"pretrained={folder}", "task=hellaswag", f"task.path={path}", "task.batch_size=2")
    assert {k: report[k] for k in ("acc", "acc_norm", "items")} == pytest.approx(expected)
    assert 0 < report["acc"] < 1 or 0 < report["acc_norm"] < 1  # the labels make the test tell the rules apart
    scores = hellaswag.score_items(eval_py.load_model(compose_config(f"pretrained={folder}", config="eval"))[0],
                                   hellaswag.read_items(path), batch_size=3, progress=False)
    assert torch.allclose(scores.sum_loss, sums, rtol=1e-4) and torch.allclose(scores.mean_loss, means, rtol=1e-4)


def test_hellaswag_is_downloaded_once_into_the_cache(tmp_path, hf_folder, hellaswag_file, monkeypatch):
    folder, _ = hf_folder
    path, _, _, expected = hellaswag_file
    served = []

    def fake_urlopen(url, timeout=None):
        served.append(url)
        return io.BytesIO(path.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    for _ in range(2):
        report = run_eval(tmp_path, f"pretrained={folder}", "task=hellaswag", f"task.cache_dir={cache}")
        assert report["acc_norm"] == pytest.approx(expected["acc_norm"])
    assert served == [hellaswag.VAL_URL]
    assert (cache / "hellaswag_val.jsonl").read_bytes() == path.read_bytes()


def test_hellaswag_offline_without_a_cached_copy_is_one_line(tmp_path, hf_folder):
    folder, _ = hf_folder
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "eval.py", f"pretrained={folder}", "task=hellaswag", f"task.cache_dir={tmp_path / 'cache'}",
         "+task.url=http://127.0.0.1:9/hellaswag_val.jsonl", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
    assert "could not be downloaded" in out.stderr and "task.path=FILE" in out.stderr
    assert not run_dir.exists() and not (tmp_path / "cache").exists()  # nothing left behind


def test_a_file_that_is_not_hellaswag_is_named_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 1}) + "\n{\"ctx\": 3}\n")
    with pytest.raises(UserError, match=r"bad.jsonl line 2 is not a HellaSwag item"):
        hellaswag.read_items(path)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_hellaswag_callback_scores_the_model_during_training(tmp_path, hellaswag_file, capsys, accumulate):
    """Once per optimizer step, however many batches each step accumulates."""
    from gptlit.cli.build import fit
    from tests.conftest import compose_train

    path = hellaswag_file[0]
    trainer = fit(compose_train(tmp_path, "callbacks=hellaswag", "callbacks.hellaswag.every_n_steps=2",
                                f"callbacks.hellaswag.path={path}", "trainer.max_steps=4",
                                f"+trainer.accumulate_grad_batches={accumulate}"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("HellaSwag")]
    assert [line.split(":")[0] for line in lines] == ["HellaSwag at step 2", "HellaSwag at step 4"]
    final = hellaswag.hellaswag(trainer.lightning_module.model, hellaswag.read_items(path), progress=False)
    assert lines[-1].endswith(f"acc_norm {final['acc_norm']:.4f}, acc {final['acc']:.4f} on 5 items")


def test_cli_says_which_part_of_a_file_it_scores_and_writes_no_empty_log(tmp_path, hf_folder):
    folder, _ = hf_folder
    text = tmp_path / "mine.txt"
    text.write_text(find_verdict().read_text(encoding="utf-8")[:4000], encoding="utf-8")
    out = subprocess.run([sys.executable, "eval.py", f"pretrained={folder}", f"data.path={text}", "progress=false",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"val split of {text} (its last 10%, after data.train_ratio=0.9; split=all scores all of it): loss " in out.stdout
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "eval.json"]
