"""Generation's own logits processing: OpenAI's presence and frequency penalties and logit_bias."""


def test_openai_penalties_count_generated_tokens_only_and_add_the_bias():
    import torch

    from llmops.models.model.generation import SamplingParams, _OpenAIPenalties

    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((4, 3.0),))
    processor = _OpenAIPenalties(params, prompt_width=2)
    ids = torch.tensor([[1, 1, 2, 2, 3]])  # prompt [1, 1], generated [2, 2, 3]
    out = processor(ids, torch.zeros(1, 5))
    assert out.tolist() == [[0.0, 0.0, -1.0, -0.75, 3.0]]  # 1: prompt only; 2: twice; 3: once; 4: biased
