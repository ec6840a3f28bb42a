//! `grids/<district code>.geojson`: the grids (网格) of a district, one GeoJSON FeatureCollection
//! per file.
//!
//! Each feature is a (Multi)Polygon in WGS 84 lon/lat with the properties `code` (15 digits: the
//! community code + 3), `name` and `households`. JSON parsers keep no positions, so the line of a
//! feature is found by a small scan of the text; the messages also name the feature's index.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use geo::{Area, InteriorPoint, MultiPolygon, Polygon};
use geojson::{Feature, GeometryValue, Position};
use serde_json::Value;
use sqlx::PgConnection;
use wangge_domain::{GridCode, OrgCode, OrgLevel};

use crate::source::{Lines, Parsed};
use crate::{Error, Known};

/// The directory of the grid files, relative to the seeds directory.
pub(crate) const DIR: &str = "grids";

/// A grid as seeded: code, name, households and boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSeed {
    pub code: GridCode,
    pub name: String,
    /// Households in the grid (a grid has about 300-500).
    pub households: u32,
    /// WGS 84, x = longitude, y = latitude.
    pub boundary: MultiPolygon<f64>,
}

/// A point strictly inside the grid, as (longitude, latitude): where a demo case in the grid is
/// reported. (NaN, NaN) only for an empty boundary, which the loader never produces.
pub fn interior_point(grid: &GridSeed) -> (f64, f64) {
    grid.boundary
        .interior_point()
        .map_or((f64::NAN, f64::NAN), |p| (p.x(), p.y()))
}

/// The grids of `dir/grids/*.geojson` that are well-formed (geometry, code, properties) and not
/// duplicated, sorted by code; bad features are skipped (the importer reports them). Whether
/// their communities exist is not checked here: that needs `orgs.csv` and is the importer's job.
pub fn load_grids(dir: &Path) -> Result<Vec<GridSeed>, Error> {
    let grid_dir = dir.join(DIR);
    let entries = std::fs::read_dir(&grid_dir).map_err(|e| Error::io(&grid_dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&grid_dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && name.ends_with(".geojson")
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let path = grid_dir.join(&name);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        files.push(parse(&format!("{DIR}/{name}"), &text));
    }
    check_duplicates(&mut files);
    let mut grids: Vec<GridSeed> = files
        .into_iter()
        .flat_map(|f| f.rows)
        .map(|r| r.seed)
        .collect();
    grids.sort_by_key(|g| g.code);
    Ok(grids)
}

/// One validated feature.
#[derive(Debug, Clone)]
pub(crate) struct GridRow {
    pub line: usize,
    pub index: usize,
    pub seed: GridSeed,
    /// The feature's geometry as GeoJSON text, stored as is.
    pub geometry: String,
}

/// Byte offsets of the elements of the top-level `features` array.
fn feature_offsets(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut offsets = Vec::new();
    // Nesting of objects and arrays; the FeatureCollection itself is depth 1.
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut string_start = 0;
    // The last string closed at depth 1: the key of the value that follows.
    let mut last_key = "";
    let mut in_features = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if depth == 1 {
                    last_key = text.get(string_start..i).unwrap_or_default();
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b'{' | b'[' => {
                if depth == 2 && in_features && b == b'{' {
                    offsets.push(i);
                }
                depth += 1;
                if depth == 2 {
                    in_features = b == b'[' && last_key == "features";
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth < 2 {
                    in_features = false;
                }
            }
            _ => {}
        }
    }
    offsets
}

fn check_rings(rings: &[Vec<Position>]) -> Result<(), String> {
    if rings.is_empty() {
        return Err("a polygon has no ring".to_owned());
    }
    for ring in rings {
        if ring.len() < 4 {
            return Err(format!(
                "a ring has {} positions, at least 4 are needed",
                ring.len()
            ));
        }
        for position in ring {
            let p = position.as_slice();
            if p.len() < 2 || p.iter().any(|c| !c.is_finite()) {
                return Err(format!("position {p:?} is not a finite [lon, lat]"));
            }
            if !(-180.0..=180.0).contains(&p[0]) || !(-90.0..=90.0).contains(&p[1]) {
                return Err(format!("position {p:?} is not WGS 84 [lon, lat]"));
            }
        }
        let (first, last) = (ring[0].as_slice(), ring[ring.len() - 1].as_slice());
        if first[..2] != last[..2] {
            return Err("a ring is not closed (first and last positions differ)".to_owned());
        }
    }
    Ok(())
}

/// The boundary as a MultiPolygon, refusing other geometry types and degenerate shapes. The
/// positions are checked before the conversion, which would panic on a short one.
fn boundary(value: &GeometryValue) -> Result<MultiPolygon<f64>, String> {
    let multi = match value {
        GeometryValue::Polygon { coordinates } => {
            check_rings(coordinates)?;
            MultiPolygon::new(vec![
                Polygon::<f64>::try_from(value).map_err(|e| e.to_string())?,
            ])
        }
        GeometryValue::MultiPolygon { coordinates } => {
            if coordinates.is_empty() {
                return Err("the MultiPolygon is empty".to_owned());
            }
            coordinates
                .iter()
                .try_for_each(|polygon| check_rings(polygon))?;
            MultiPolygon::<f64>::try_from(value).map_err(|e| e.to_string())?
        }
        other => {
            return Err(format!(
                "geometry is a {}, not a Polygon or MultiPolygon",
                other.type_name()
            ));
        }
    };
    if multi.unsigned_area() <= 0.0 || multi.interior_point().is_none() {
        return Err("the boundary has no area".to_owned());
    }
    Ok(multi)
}

fn string_property<'a>(feature: &'a Feature, key: &str) -> Result<&'a str, String> {
    match feature.property(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
        Some(Value::String(_)) => Err(format!("property {key} is empty")),
        Some(other) => Err(format!("property {key} is not a string: {other}")),
        None => Err(format!("property {key} is missing")),
    }
}

fn validate(feature: Feature, district: Option<OrgCode>) -> Result<(GridSeed, String), String> {
    let code: GridCode = string_property(&feature, "code")?
        .parse()
        .map_err(|e| format!("malformed grid code: {e}"))?;
    if let Some(district) = district
        && code.district() != district
    {
        return Err(format!(
            "grid {code} is not in district {district}, which the file is named after"
        ));
    }
    let name = string_property(&feature, "name")?.to_owned();
    let households = match feature.property("households") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| i32::try_from(n).is_ok())
            .ok_or_else(|| format!("households {value} is not a whole number"))?,
    };
    let geometry = feature
        .geometry
        .ok_or_else(|| format!("grid {code} has no geometry"))?;
    let boundary = boundary(&geometry.value).map_err(|e| format!("grid {code}: {e}"))?;
    let json = serde_json::to_string(&geometry).map_err(|e| e.to_string())?;
    Ok((
        GridSeed {
            code,
            name,
            households,
            boundary,
        },
        json,
    ))
}

/// Reads one grid file: everything that can be checked without the org tree.
pub(crate) fn parse(file: &str, text: &str) -> Parsed<GridRow> {
    let mut parsed = Parsed::new(file);
    let lines = Lines::new(text);
    // A file named after a district holds only that district's grids.
    let district = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<OrgCode>().ok())
        .filter(|c| c.level() == OrgLevel::District);

    let root: Value = match serde_json::from_str(text) {
        Ok(root) => root,
        Err(e) => {
            parsed.problem(
                e.line().max(1),
                format!("not valid JSON: {e}: no grid imported"),
            );
            return parsed.finish();
        }
    };
    let features = match root.get("features").and_then(Value::as_array) {
        Some(features) if root.get("type").and_then(Value::as_str) == Some("FeatureCollection") => {
            features
        }
        _ => {
            parsed.problem(1, "not a GeoJSON FeatureCollection: no grid imported");
            return parsed.finish();
        }
    };
    let offsets = feature_offsets(text);
    let located = offsets.len() == features.len();
    for (index, value) in features.iter().enumerate() {
        // Without a position, the line is the feature's index (and the message says so).
        let (line, at) = if located {
            (lines.line_of(offsets[index]), format!("feature {index}"))
        } else {
            (
                index,
                format!("feature {index} (line unknown: the line number is the feature index)"),
            )
        };
        let feature: Feature = match serde_json::from_value(value.clone()) {
            Ok(feature) => feature,
            Err(e) => {
                parsed.reject(line, format!("{at}: not a GeoJSON Feature: {e}"));
                continue;
            }
        };
        match validate(feature, district) {
            Ok((seed, geometry)) => parsed.rows.push(GridRow {
                line,
                index,
                seed,
                geometry,
            }),
            Err(message) => parsed.reject(line, format!("{at}: {message}")),
        }
    }
    parsed.finish()
}

/// Refuses every occurrence of a grid code found more than once, across all files.
fn check_duplicates(files: &mut [Parsed<GridRow>]) {
    let mut places: BTreeMap<GridCode, Vec<(String, usize)>> = BTreeMap::new();
    for file in files.iter() {
        for row in &file.rows {
            places
                .entry(row.seed.code)
                .or_default()
                .push((file.file.clone(), row.line));
        }
    }
    let dups: HashSet<GridCode> = places
        .iter()
        .filter(|(_, p)| p.len() > 1)
        .map(|(c, _)| *c)
        .collect();
    if dups.is_empty() {
        return;
    }
    for file in files.iter_mut() {
        let rows = std::mem::take(&mut file.rows);
        for row in rows {
            if !dups.contains(&row.seed.code) {
                file.rows.push(row);
                continue;
            }
            let others: Vec<String> = places[&row.seed.code]
                .iter()
                .filter(|(f, l)| !(f == &file.file && *l == row.line))
                .map(|(f, l)| {
                    if f == &file.file {
                        format!("line {l}")
                    } else {
                        format!("{f}:{l}")
                    }
                })
                .collect();
            let message = format!(
                "feature {}: duplicate grid code {} (also at {})",
                row.index,
                row.seed.code,
                others.join(", ")
            );
            file.reject(row.line, message);
        }
        file.problems.sort_by_key(|p| p.line);
    }
}

/// The checks that need every grid file and the org tree: duplicates, and the community.
pub(crate) fn check(files: &mut [Parsed<GridRow>], known: &Known) {
    check_duplicates(files);
    for file in files.iter_mut() {
        let rows = std::mem::take(&mut file.rows);
        for row in rows {
            let community = row.seed.code.community();
            match known.org_problem("community", &community, &[OrgLevel::Community]) {
                None => file.rows.push(row),
                Some(problem) => {
                    let message =
                        format!("feature {}: grid {}: {problem}", row.index, row.seed.code);
                    file.reject(row.line, message);
                }
            }
        }
        file.problems.sort_by_key(|p| p.line);
    }
}

/// Upserts the grids of one file; returns the number of rows inserted or changed.
pub(crate) async fn write(tx: &mut PgConnection, rows: &[GridRow]) -> Result<u64, sqlx::Error> {
    let codes: Vec<&str> = rows.iter().map(|g| g.seed.code.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|g| g.seed.name.as_str()).collect();
    let communities: Vec<String> = rows
        .iter()
        .map(|g| g.seed.code.community().to_string())
        .collect();
    // Validated to fit an i32.
    let households: Vec<i32> = rows
        .iter()
        .map(|g| i32::try_from(g.seed.households).unwrap_or(i32::MAX))
        .collect();
    let boundaries: Vec<&str> = rows.iter().map(|g| g.geometry.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO grids (code, name, community_code, households, boundary)
         SELECT code, name, community_code, households, boundary::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[])
             AS t (code, name, community_code, households, boundary)
         ON CONFLICT (code) DO UPDATE SET
             name = EXCLUDED.name, community_code = EXCLUDED.community_code,
             households = EXCLUDED.households, boundary = EXCLUDED.boundary
         WHERE (grids.name, grids.community_code, grids.households, grids.boundary)
             IS DISTINCT FROM
             (EXCLUDED.name, EXCLUDED.community_code, EXCLUDED.households, EXCLUDED.boundary)",
    )
    .bind(&codes)
    .bind(&names)
    .bind(&communities)
    .bind(&households)
    .bind(&boundaries)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use geo::Contains;

    const FILE: &str = "grids/350205000000.geojson";

    fn feature(code: &str, geometry: &str) -> String {
        format!(
            r#"{{"type":"Feature","properties":{{"code":"{code}","name":"霞阳社区第1网格","households":397}},"geometry":{geometry}}}"#
        )
    }

    const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[118.0,24.5],[118.01,24.5],[118.01,24.51],[118.0,24.51],[118.0,24.5]]]}"#;

    fn collection(features: &[String]) -> String {
        format!(
            "{{\"type\":\"FeatureCollection\",\"features\":[\n{}\n]}}\n",
            features.join(",\n")
        )
    }

    fn messages(parsed: &Parsed<GridRow>) -> Vec<(usize, String)> {
        parsed
            .problems
            .iter()
            .map(|p| (p.line, p.message.clone()))
            .collect()
    }

    #[test]
    fn a_polygon_feature_becomes_a_grid_with_an_interior_point() {
        let parsed = parse(FILE, &collection(&[feature("350205002006001", SQUARE)]));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let grid = &parsed.rows[0];
        assert_eq!(grid.line, 2);
        assert_eq!(grid.seed.households, 397);
        let (lon, lat) = interior_point(&grid.seed);
        assert!(grid.seed.boundary.contains(&geo::Point::new(lon, lat)));
        assert!(
            lon > 118.0 && lon < 118.01 && lat > 24.5 && lat < 24.51,
            "{lon} {lat}"
        );
    }

    #[test]
    fn multipolygons_are_accepted() {
        let multi = r#"{"type":"MultiPolygon","coordinates":[[[[118.0,24.5],[118.01,24.5],[118.01,24.51],[118.0,24.5]]],[[[118.02,24.5],[118.03,24.5],[118.03,24.51],[118.02,24.5]]]]}"#;
        let parsed = parse(FILE, &collection(&[feature("350205002006001", multi)]));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.rows[0].seed.boundary.0.len(), 2);
    }

    #[test]
    fn bad_features_are_refused_with_their_line_and_index() {
        let features = [
            feature("350205002006001", SQUARE),
            feature("350205002006002", r#"{"type":"Point","coordinates":[118.0,24.5]}"#),
            feature("35020500200600", SQUARE),
            feature("350203001001001", SQUARE),
            feature("350205002006003", r#"{"type":"Polygon","coordinates":[[[118.0],[118.01,24.5],[118.0,24.51],[118.0]]]}"#),
            feature("350205002006004", r#"{"type":"Polygon","coordinates":[[[118.0,24.5],[118.01,24.5],[118.0,24.51],[118.0,24.52]]]}"#),
            feature("350205002006005", r#"{"type":"Polygon","coordinates":[[[118.0,24.5],[118.0,24.5],[118.0,24.5],[118.0,24.5]]]}"#),
            r#"{"type":"Feature","properties":{"code":"350205002006006","name":"x","households":-3},"geometry":null}"#
                .to_owned(),
            r#"{"type":"Feature","properties":{"code":"350205002006007","name":"x"}}"#.to_owned(),
            r#"{"type":"Nonsense"}"#.to_owned(),
        ];
        let parsed = parse(FILE, &collection(&features));
        assert_eq!(parsed.rows.len(), 1);
        assert_eq!(parsed.rejected, 9);
        let got = messages(&parsed);
        let expect = [
            (
                3,
                "feature 1: grid 350205002006002: geometry is a Point, not a Polygon or MultiPolygon",
            ),
            (4, "feature 2: malformed grid code"),
            (
                5,
                "feature 3: grid 350203001001001 is not in district 350205000000",
            ),
            (
                6,
                "feature 4: grid 350205002006003: position [118.0] is not a finite [lon, lat]",
            ),
            (7, "feature 5: grid 350205002006004: a ring is not closed"),
            (
                8,
                "feature 6: grid 350205002006005: the boundary has no area",
            ),
            (9, "feature 7: households -3 is not a whole number"),
            (10, "feature 8: grid 350205002006007 has no geometry"),
            (11, "feature 9: not a GeoJSON Feature"),
        ];
        for ((line, message), (want_line, want)) in got.iter().zip(expect) {
            assert_eq!(*line, want_line, "{message}");
            assert!(
                message.starts_with(want),
                "{message:?} should start with {want:?}"
            );
        }
    }

    #[test]
    fn a_file_that_is_not_a_feature_collection_imports_nothing() {
        let parsed = parse(
            FILE,
            "{\"type\":\"FeatureCollection\",\n\"features\":[\n{,}]}",
        );
        assert_eq!(parsed.rows.len(), 0);
        assert_eq!(parsed.problems[0].line, 3);
        let parsed = parse(FILE, r#"{"type":"Feature","features":[]}"#);
        assert_eq!(parsed.problems.len(), 1);
    }

    #[test]
    fn feature_lines_are_found_in_pretty_printed_files_too() {
        let text = "{\n  \"type\": \"FeatureCollection\",\n  \"name\": \"a [tricky] {name} \\\" \",\n  \"bbox\": [1, 2, 3, 4],\n  \"features\": [\n    {\n      \"type\": \"Feature\"\n    },\n    {\"type\": \"Feature\"}\n  ]\n}\n";
        let lines = Lines::new(text);
        let got: Vec<usize> = feature_offsets(text)
            .into_iter()
            .map(|o| lines.line_of(o))
            .collect();
        assert_eq!(got, [6, 9]);
    }

    #[test]
    fn duplicate_grid_codes_are_refused_in_every_file() {
        let mut files = vec![
            parse(
                FILE,
                &collection(&[
                    feature("350205002006001", SQUARE),
                    feature("350205002006002", SQUARE),
                ]),
            ),
            parse(
                "grids/other.geojson",
                &collection(&[feature("350205002006001", SQUARE)]),
            ),
        ];
        check_duplicates(&mut files);
        assert_eq!(files[0].rows.len(), 1);
        assert_eq!(files[1].rows.len(), 0);
        assert_eq!(
            files[0].problems[0].message,
            "feature 0: duplicate grid code 350205002006001 (also at grids/other.geojson:2)"
        );
        assert_eq!(
            files[1].problems[0].message,
            format!("feature 0: duplicate grid code 350205002006001 (also at {FILE}:2)")
        );
    }

    #[test]
    fn grids_of_unknown_or_rejected_communities_are_refused() {
        let mut known = Known::default();
        known
            .orgs
            .insert("350205002006".parse().unwrap(), OrgLevel::Community);
        known.rejected_orgs.insert("350205002007".to_owned());
        let mut files = vec![parse(
            FILE,
            &collection(&[
                feature("350205002006001", SQUARE),
                feature("350205002007001", SQUARE),
                feature("350205002008001", SQUARE),
            ]),
        )];
        check(&mut files, &known);
        assert_eq!(files[0].rows.len(), 1);
        let got = messages(&files[0]);
        assert_eq!(
            got[0].1,
            "feature 1: grid 350205002007001: community 350205002007 was rejected in orgs.csv"
        );
        assert_eq!(
            got[1].1,
            "feature 2: grid 350205002008001: unknown community 350205002008"
        );
    }

    #[test]
    fn the_real_grids_load_and_do_not_overlap() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../seeds");
        let grids = load_grids(&seeds).unwrap();
        assert!(grids.len() > 300, "{}", grids.len());
        let xiayang = grids
            .iter()
            .find(|g| g.code.as_str() == "350205002006001")
            .unwrap();
        assert_eq!(xiayang.name, "霞阳社区第1网格");
        // The demo reports its cases at these points.
        let (lon, lat) = interior_point(xiayang);
        assert!(
            (lon - 118.055).abs() < 1e-9 && (lat - 24.535).abs() < 1e-9,
            "{lon} {lat}"
        );
        let hongshan = grids
            .iter()
            .find(|g| g.code.as_str() == "350203001001001")
            .unwrap();
        assert_eq!(hongshan.name, "鸿山社区第1网格");
        let (lon, lat) = interior_point(hongshan);
        assert!(
            (lon - 118.07325).abs() < 1e-9 && (lat - 24.497143).abs() < 1e-9,
            "{lon} {lat}"
        );
        for grid in &grids {
            assert!((300..=500).contains(&grid.households), "{}", grid.code);
            let (lon, lat) = interior_point(grid);
            let point = geo::Point::new(lon, lat);
            // Strictly inside its own grid, and in no other.
            let holders: Vec<&GridSeed> = grids
                .iter()
                .filter(|g| g.boundary.contains(&point))
                .collect();
            assert_eq!(holders.len(), 1, "{}", grid.code);
            assert_eq!(holders[0].code, grid.code);
        }
    }
}
