"""Writes JSONL with a short text line, then one line of about MB megabytes
for each FORMAT (text or messages), then a short chat line, to stdout:

    python3 long_lines.py MB FORMAT...

The long text mixes words, digits, punctuation, a two-byte character and
newlines, so that it is tokenised as ordinary text would be."""
import json
import sys

WORDS = ["The", "library", "opens", "at", "nine,", "and", "closes", "at", "8.",
         "Caf\u00e9", "well-known", "\n", "(42)"]


def long_text(size):
    """About `size` bytes of text, as a JSON string literal (a 100 kB block,
    escaped once and repeated: writing 50 MB word by word takes seconds)."""
    parts, total, i = [], 0, 0
    while total < 100_000:
        word = WORDS[(i * 7 + i // 5) % len(WORDS)] + " "
        parts.append(word)
        total += len(word.encode())
        i += 1
    block = json.dumps("".join(parts), ensure_ascii=False)[1:-1]
    return '"' + block * max(1, size // total) + '"'


def main():
    size = int(float(sys.argv[1]) * 1_000_000)
    text = long_text(size)
    out = sys.stdout
    out.write('{"text": "A short line."}\n')
    for fmt in sys.argv[2:]:
        if fmt == "text":
            out.write('{"text": ' + text + "}\n")
        else:
            out.write('{"messages": [{"role": "user", "content": ' + text +
                      '}, {"role": "assistant", "content": "Noted."}]}\n')
    out.write('{"messages": [{"role": "user", "content": "Hi"}, '
              '{"role": "assistant", "content": "Hello."}]}\n')


if __name__ == "__main__":
    main()
