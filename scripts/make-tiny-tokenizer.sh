#!/usr/bin/env bash
# Trains the tiny Gemma-style SentencePiece tokenizer used by the tests and the
# README: OUTDIR/tokenizer.model (+ tokenizer.vocab), 512 pieces to match
# examples/tiny-g3moe's vocab_size, from the bundled corpus
# examples/data/tiny-corpus.txt (or CORPUS).
#
#   scripts/make-tiny-tokenizer.sh OUTDIR [CORPUS]
#
# Gemma's layout, as far as spm_train allows it:
#   <pad> 0, <eos> 1, <bos> 2, <unk> 3 (Gemma-3 has unk at 3 too);
#   <start_of_turn>, <end_of_turn>, <start_of_image>, <end_of_image> and
#   <image_soft_token> are user-defined symbols (ids 4-8), so SentencePiece
#   itself matches them as single tokens inside text, as Gemma's model does;
#   BPE with byte fallback (no unknown tokens), digits split, identity
#   normalisation, no dummy prefix and whitespace kept as written.
# The ids of the special tokens differ from the real Gemma-3 (105, 106,
# 255999, ...): g3moe resolves them by piece name, never by number.
# spm_train runs with one thread and no input sampling, so the same corpus
# gives the same model bytes every time.
set -euo pipefail

if (($# < 1 || $# > 2)); then
  echo "usage: $0 OUTDIR [CORPUS]" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
out=$1
corpus=${2:-$root/examples/data/tiny-corpus.txt}
spm_train=${SPM_TRAIN:-spm_train}
command -v "$spm_train" >/dev/null ||
  { echo "$0: spm_train not found (Debian package 'sentencepiece')" >&2; exit 1; }
[[ -f $corpus ]] || { echo "$0: corpus $corpus not found" >&2; exit 1; }

mkdir -p "$out"
# Train under a temporary prefix and rename: an interrupted run never leaves a
# half-written tokenizer.model behind.
tmp=$(mktemp -d "$out/.spm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The model records its input and prefix: relative names keep its bytes
# independent of where the checkout and OUTDIR are.
cp "$corpus" "$tmp/corpus.txt"
(cd "$tmp" && "$spm_train" \
  --input=corpus.txt --model_prefix=tokenizer \
  --model_type=bpe --vocab_size=512 --num_threads=1 \
  --byte_fallback=true --character_coverage=1.0 --split_digits=true \
  --normalization_rule_name=identity --add_dummy_prefix=false \
  --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true \
  --pad_id=0 --pad_piece='<pad>' --eos_id=1 --eos_piece='<eos>' \
  --bos_id=2 --bos_piece='<bos>' --unk_id=3 --unk_piece='<unk>' \
  --user_defined_symbols='<start_of_turn>,<end_of_turn>,<start_of_image>,<end_of_image>,<image_soft_token>' \
  --shuffle_input_sentence=false --minloglevel=2 >log 2>&1) ||
  { cat "$tmp/log" >&2; exit 1; }
mv "$tmp/tokenizer.vocab" "$out/tokenizer.vocab"
mv "$tmp/tokenizer.model" "$out/tokenizer.model"
