"""The model itself: presets, pretrained models and LoRA, generation and scoring, compressed variants, loading,
and the traffic record a generation makes."""
