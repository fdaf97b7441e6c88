#!/usr/bin/env python3
"""Build the RFC 4475 torture-message corpus (<tag>.sip) in this directory.

Two independent renderings of every message are taken from the RFC and must agree
byte for byte before any file is written:

1. section3.txt: the figures of RFC 4475 section 3 with the markup of section 2
   (<allOneLine>, <hex>, <repeat count=N>), expanded here as section 2 says:
   - 2.1: the lines between <allOneLine> tags are concatenated, line breaks dropped;
   - 2.2: <hex>..</hex> is one octet per pair of hex digits (whitespace between the
     pairs is layout only), also inside quoted strings;
   - 2.3: <repeat count=N>value</repeat> is value repeated N times;
   every other line break of a figure is CRLF.
2. appendix-a.b64: the base64 block of RFC 4475 Appendix A.1, a gzip-compressed tar
   of one file per message ("bit-exact archive", RFC 4475 section 1). The gzip CRC
   guards the transcription of the block.

Usage: generate.py          write <tag>.sip for every section-3 message
       generate.py --check  exit 1 unless the .sip files already match both renderings
"""

import base64
import io
import pathlib
import re
import sys
import tarfile

HERE = pathlib.Path(__file__).resolve().parent
HEX = re.compile(r"<hex>(.*?)</hex>", re.S)
REPEAT = re.compile(r"<repeat count=(\d+)>(.*?)</repeat>", re.S)

# Where the Appendix A file differs from the section 3 figure, the corpus follows the
# figure; each difference is stated exactly, so any other difference still fails.
ARCHIVE_DIFFERENCES = {
    # The archived file stops after "l: 0" CRLF: the empty line that ends the header
    # section is missing, which would turn a display-name test into a framing test.
    "baddn": lambda figure: figure[:-2],
    # The archived Via host is misspelt "host1.examle.com"; the figure has "example".
    "trws": lambda figure: figure.replace(b"host1.example.com", b"host1.examle.com", 1),
}


def section3_blocks(text):
    """Yield (tag, section, lines) for each "@@ tag section" block of section3.txt."""
    tag, section, lines = None, None, []
    for line in text.split("\n"):
        if line.startswith("@@ "):
            if tag is not None:
                yield tag, section, lines
            _, tag, section = line.split()
            lines = []
        elif tag is not None:
            lines.append(line)
    if tag is not None:
        # The file's final newline ends the last line; it is not an empty message line.
        if lines and lines[-1] == "":
            lines.pop()
        yield tag, section, lines


def logical_lines(lines):
    """Join <allOneLine> runs (RFC 4475 section 2.1) and <hex> runs split over lines."""
    out, run, in_one_line = [], None, False
    for line in lines:
        if line == "<allOneLine>":
            in_one_line, run = True, ""
            continue
        if line == "</allOneLine>":
            out.append(run)
            in_one_line, run = False, None
            continue
        if in_one_line:
            run += line
        elif run is not None:  # inside a <hex> that spans lines
            run += line
            if "</hex>" in line:
                out.append(run)
                run = None
        elif line.count("<hex>") > line.count("</hex>"):
            run = line
        else:
            out.append(line)
    if run is not None or in_one_line:
        raise ValueError("unterminated markup")
    return out


def expand(line):
    """Expand <repeat> (section 2.3) then <hex> (section 2.2) in one logical line."""
    while REPEAT.search(line):
        line = REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), line)
    out, pos = bytearray(), 0
    for m in HEX.finditer(line):
        out += line[pos:m.start()].encode("ascii")
        out += bytes.fromhex("".join(m.group(1).split()))
        pos = m.end()
    out += line[pos:].encode("ascii")
    return bytes(out)


def render(lines):
    return b"".join(expand(line) + b"\r\n" for line in logical_lines(lines))


def archive():
    """The files of RFC 4475 Appendix A.1, by tag."""
    blob = base64.b64decode("".join((HERE / "appendix-a.b64").read_text().split()))
    files = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".dat"):
                files[pathlib.PurePath(member.name).stem] = tar.extractfile(member).read()
    return files


def main():
    check = "--check" in sys.argv[1:]
    archived = archive()
    failures = 0
    blocks = list(section3_blocks((HERE / "section3.txt").read_text(encoding="ascii")))
    for tag, section, lines in blocks:
        rendered = render(lines)
        reference = archived.get(tag)
        expected = ARCHIVE_DIFFERENCES.get(tag, lambda figure: figure)(rendered)
        if reference != expected:
            failures += 1
            if reference is None:
                print(f"{tag} (section {section}): not in the Appendix A archive")
                continue
            at = next(
                (i for i, (a, b) in enumerate(zip(expected, reference)) if a != b),
                min(len(expected), len(reference)),
            )
            print(f"{tag} (section {section}): section 3 and Appendix A differ at byte {at}:"
                  f" {expected[at:at + 24]!r} vs {reference[at:at + 24]!r}")
            continue
        target = HERE / f"{tag}.sip"
        if check:
            if not target.exists() or target.read_bytes() != rendered:
                failures += 1
                print(f"{tag}: {target.name} is missing or differs; run generate.py")
        else:
            target.write_bytes(rendered)
    extra = sorted(set(archived) - {tag for tag, _, _ in blocks})
    print(f"{len(blocks)} messages, {failures} failures;"
          f" archive files not described in section 3 (not used): {', '.join(extra) or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
