"""LLM-Adapters accuracy as an `evaluate` metric: the share of extracted answers that score.

Load it by path, which needs no network: ``evaluate.load(perft_peft.evaluation.METRIC_PATH)`` for label tasks
(exact match of strings such as "solution1" or "C"), ``config_name="number"`` for the numeric arithmetic tasks
(a prediction within ``tolerance``, default 0.001, of the reference). Predictions are the extracted answers
(``perft_peft.evaluation.extraction``): "" or None where nothing was found. The scoring rule lives in the package
so that the per-example flags of the report and this metric cannot disagree.
"""

import datasets
import evaluate

from perft_peft.evaluation.extraction import NUMBER_TOLERANCE, accuracy

_CITATION = """\
@inproceedings{hu2023llmadapters,
  title = {{LLM}-Adapters: An Adapter Family for Parameter-Efficient Fine-Tuning of Large Language Models},
  author = {Hu, Zhiqiang and Wang, Lei and Lan, Yihuai and Xu, Wanyu and Lim, Ee-Peng and Bing, Lidong and
            Xu, Xing and Poria, Soujanya and Lee, Roy Ka-Wei},
  booktitle = {EMNLP},
  year = {2023}
}
"""

_INPUTS = """\
Args:
    predictions: extracted answers: strings ("true", "answer3", "C"; "" where the response held none), or with
        config_name="number" floats (None where the response held no number). Empty and None are never correct.
    references: the test set's "answer" fields; floats (or their text, e.g. "576.0") with config_name="number".
    tolerance: config_name="number" only: the largest |prediction - reference| that counts as correct (0.001).
Returns:
    accuracy: fraction correct in [0, 1]; correct: how many; total: how many.
"""

_CONFIGS = ("default", "number")


class LlmAdaptersAccuracy(evaluate.Metric):
    def _info(self):
        if self.config_name not in _CONFIGS:
            raise ValueError(f"config_name must be one of {_CONFIGS}, not {self.config_name!r}.")
        kind = datasets.Value("float64" if self.config_name == "number" else "string")
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": kind, "references": kind}),
            reference_urls=["https://github.com/AGI-Edgerunners/LLM-Adapters"],
        )

    def _compute(self, predictions, references, tolerance=NUMBER_TOLERANCE):
        return accuracy(predictions, references, numeric=self.config_name == "number", tolerance=tolerance)
