#!/usr/bin/env python3
"""Generates the demo grids (网格) of 海沧 and 思明 and the demo workers (网格员 and staff).

Reads seeds/orgs.csv and seeds/departments.toml, writes seeds/grids/<district-code>.geojson and
seeds/workers.toml. Deterministic: the same inputs always give byte-identical outputs, so the
generated files can be committed and diffed. Python 3.11+ standard library only (tomllib).

Layout: every community of the two districts gets 2-4 rectangular grids. The district's box is cut
into a lattice of equal cells, filled row by row in serpentine order (west to east, then east to
west on the next row), communities in code order; consecutive cells of that order always share an
edge, so the grids of one community are adjacent and those of one street lie together. Lattice
lines are computed once, so neighbouring cells share their edges exactly and never overlap.
Community codes that occur more than once in orgs.csv are skipped: the importer rejects them.

Usage: python3 seeds/tools/make_grids.py [--seeds DIR]
"""

import argparse
import collections
import csv
import json
import math
import pathlib
import tomllib
import zlib

# District code -> (west, south, east, north) in WGS 84 degrees: a plausible box per district.
DISTRICTS = {
    "350205000000": (117.95, 24.43, 118.06, 24.56),  # 海沧区: west of the bay
    "350203000000": (118.07, 24.42, 118.20, 24.50),  # 思明区: on the island, east of 海沧
}

SURNAMES = "陈林黄张李王吴刘蔡杨郑许洪苏曾叶庄谢周柯邱"
GIVEN_NAMES = [
    "志强", "雅婷", "建华", "丽娟", "文杰", "秀英", "俊杰", "晓燕", "国荣", "美玲",
    "振华", "淑贞", "明辉", "佳怡", "宏伟", "碧霞", "伟东", "小红", "海峰", "燕妮",
    "金龙", "丽华", "家豪", "婉婷", "清泉", "素梅", "建国", "雪梅", "耀华", "惠珍",
    "永福", "晓敏", "少东", "艳玲", "思远", "月娥",
]


def stable_hash(text):
    """A hash that does not change between runs (Python's hash() is salted)."""
    return zlib.crc32(text.encode("utf-8"))


def person_name(key):
    h = stable_hash(key)
    return SURNAMES[h % len(SURNAMES)] + GIVEN_NAMES[(h // len(SURNAMES)) % len(GIVEN_NAMES)]


def read_orgs(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    counts = collections.Counter(r["code"] for r in rows)
    # Duplicated codes are left out everywhere: we cannot tell which row is right.
    return [r for r in rows if counts[r["code"]] == 1]


def grids_of_district(orgs, district_code):
    """The grid features of one district, in code order."""
    prefix = district_code[:6]
    communities = sorted(
        (r for r in orgs if r["level"] == "community" and r["code"].startswith(prefix)),
        key=lambda r: r["code"],
    )
    plan = []  # (grid code, name, community row) in serpentine fill order
    for community in communities:
        count = 2 + stable_hash(community["code"]) % 3  # 2, 3 or 4 grids
        for seq in range(1, count + 1):
            plan.append((f"{community['code']}{seq:03d}", f"{community['name']}第{seq}网格"))

    west, south, east, north = DISTRICTS[district_code]
    # Cells roughly square on the ground: a degree of longitude is shorter than one of latitude.
    width_km = (east - west) * math.cos(math.radians((south + north) / 2))
    height_km = north - south
    cols = max(1, math.ceil(math.sqrt(len(plan) * width_km / height_km)))
    rows = math.ceil(len(plan) / cols)
    lons = [round(west + (east - west) * i / cols, 6) for i in range(cols + 1)]
    # Row 0 is the northernmost.
    lats = [round(north - (north - south) * j / rows, 6) for j in range(rows + 1)]

    features = []
    for index, (code, name) in enumerate(plan):
        row, offset = divmod(index, cols)
        col = offset if row % 2 == 0 else cols - 1 - offset
        w, e, n, s = lons[col], lons[col + 1], lats[row], lats[row + 1]
        # Exterior ring counterclockwise, as RFC 7946 asks.
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "code": code,
                    "name": name,
                    "households": 300 + stable_hash(code) % 201,
                },
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    return features


def write_geojson(path, name, features):
    # One feature per line: readable diffs, and the importer reports problems by line.
    lines = [json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in features]
    head = json.dumps({"type": "FeatureCollection", "name": name}, ensure_ascii=False, separators=(",", ":"))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(head[:-1] + ',"features":[\n')
        f.write(",\n".join(lines))
        f.write("\n]}\n")


def toml_str(s):
    return json.dumps(s, ensure_ascii=False)  # A JSON string is a valid TOML basic string here.


def worker_line(worker_id, role, org_code):
    return (
        f"  {{ id = {toml_str(worker_id)}, name = {toml_str(person_name(worker_id))}, "
        f"role = {toml_str(role)}, org_code = {toml_str(org_code)} }},"
    )


def write_workers(path, orgs, grids_by_district, departments):
    by_code = {r["code"]: r for r in orgs}
    out = [
        "# Demo workers, generated by seeds/tools/make_grids.py from orgs.csv, the grids and",
        "# departments.toml: edit those and regenerate rather than editing this file by hand.",
        "#",
        "# role:     grid_worker (网格员), community_staff (社区工作站), street_operator (街道指挥中心",
        "#           受理员/派遣员), duty_chief (值班长), district_operator (区指挥中心), department_handler",
        "#           (专业部门 handler).",
        "# org_code: the 15-digit grid of a grid worker, the department code of a department handler,",
        "#           the 12-digit org of everybody else.",
        "",
        "worker = [",
    ]
    for district_code, features in grids_by_district.items():
        district = by_code[district_code]
        prefix = district_code[:6]
        out.append(f"  # ---- {district['name']} ({district_code}) ----")
        out.append(worker_line(f"op-{district_code}", "district_operator", district_code))
        out.append(worker_line(f"dc-{district_code}", "duty_chief", district_code))
        streets = sorted(
            (r for r in orgs if r["level"] == "street" and r["code"].startswith(prefix)), key=lambda r: r["code"]
        )
        for street in streets:
            out.append(f"  # {street['name']} ({street['code']})")
            out.append(worker_line(f"op-{street['code']}", "street_operator", street["code"]))
            out.append(worker_line(f"dc-{street['code']}", "duty_chief", street["code"]))
            communities = sorted(
                (r for r in orgs if r["level"] == "community" and r["parent_code"] == street["code"]),
                key=lambda r: r["code"],
            )
            for community in communities:
                out.append(worker_line(f"cs-{community['code']}", "community_staff", community["code"]))
                for feature in features:
                    code = feature["properties"]["code"]
                    if code.startswith(community["code"]):
                        out.append(worker_line(f"gw-{code}", "grid_worker", code))
        out.append(f"  # {district['name']} departments")
        for dept in departments:
            if dept["org_code"].startswith(prefix):
                out.append(worker_line(f"dh-{dept['code']}", "department_handler", dept["code"]))
        out.append("")
    out.append("]")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=pathlib.Path(__file__).resolve().parent.parent, type=pathlib.Path)
    args = parser.parse_args()
    seeds = args.seeds

    orgs = read_orgs(seeds / "orgs.csv")
    by_code = {r["code"]: r for r in orgs}
    with open(seeds / "departments.toml", "rb") as f:
        departments = tomllib.load(f).get("department", [])

    (seeds / "grids").mkdir(exist_ok=True)
    grids_by_district = {}
    for district_code in DISTRICTS:
        features = grids_of_district(orgs, district_code)
        grids_by_district[district_code] = features
        write_geojson(seeds / "grids" / f"{district_code}.geojson", by_code[district_code]["name"], features)
        print(f"grids/{district_code}.geojson: {len(features)} grids")
    write_workers(seeds / "workers.toml", orgs, grids_by_district, departments)
    print("workers.toml written")


if __name__ == "__main__":
    main()
