"""QLoRA fine-tuning of the text model: prepare data, train an adapter, measure perplexity.

The loop, with the commands that ``docs/training.md`` walks through::

    python -m training.prepare training/data/articles.jsonl --model tiny
    articleforge train --config training/configs/tiny.yaml
    articleforge eval runs/tiny
    ARTICLEFORGE_TEXT_ADAPTER=writer=runs/tiny articleforge serve text
"""
