"""T5 for summarization: transformers' T5ForConditionalGeneration, from a save_pretrained directory
(t5-small on a cluster) or built from a small config (the offline stand-in).

T5 ties its input embeddings (and, in t5-small, the output layer) to one matrix. safetensors stores a
tensor once, so the state dict names each tied matrix once (`shared.weight`) and loading fills the
aliases from it.
"""
import torch
from transformers import T5Config, T5ForConditionalGeneration


class Summarizer(T5ForConditionalGeneration):

    def tied_aliases(self) -> set[str]:
        every = {name for name, _ in self.named_parameters(remove_duplicate=False)}
        return every - {name for name, _ in self.named_parameters()}

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for name in self.tied_aliases():
            state.pop(prefix + name, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = set(result.missing_keys) - self.tied_aliases()
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"weights do not fit the model: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(result.unexpected_keys)[:5]}")
        return result

    def last_decoder_states(self, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
        """The last decoder layer's output (after its final layer norm), without the output layer."""
        encoded = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.get_decoder()(input_ids=decoder_input_ids, encoder_hidden_states=encoded,
                                  encoder_attention_mask=attention_mask).last_hidden_state


def built(vocab: int, d_model: int, layers: int, heads: int, d_ff: int, dropout: float, pad_id: int,
          eos_id: int) -> Summarizer:
    config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                      num_decoder_layers=layers, num_heads=heads, dropout_rate=dropout, pad_token_id=pad_id,
                      eos_token_id=eos_id, decoder_start_token_id=pad_id, tie_word_embeddings=True)
    return Summarizer(config)


def pretrained(path: str, dropout: float | None = None) -> Summarizer:
    kwargs = {} if dropout is None else {"dropout_rate": dropout}
    return Summarizer.from_pretrained(path, **kwargs)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
