//! Point-in-grid lookup: an R-tree over grid bounding boxes, then an exact polygon test.

use geo::{BoundingRect, Intersects, MultiPolygon, Point};
use rstar::{AABB, RTree, RTreeObject};

use crate::codes::GridCode;

struct Entry {
    code: GridCode,
    boundary: MultiPolygon<f64>,
    envelope: AABB<[f64; 2]>,
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// The grids of a scope, indexed for lookup by location.
#[derive(Default)]
pub struct GridIndex {
    tree: RTree<Entry>,
}

impl std::fmt::Debug for GridIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridIndex")
            .field("grids", &self.tree.size())
            .finish()
    }
}

impl GridIndex {
    /// Builds the index; grids without an extent are left out.
    pub fn new(grids: impl IntoIterator<Item = (GridCode, MultiPolygon<f64>)>) -> GridIndex {
        let entries = grids
            .into_iter()
            .filter_map(|(code, boundary)| {
                let rect = boundary.bounding_rect()?;
                let envelope =
                    AABB::from_corners([rect.min().x, rect.min().y], [rect.max().x, rect.max().y]);
                Some(Entry {
                    code,
                    boundary,
                    envelope,
                })
            })
            .collect();
        GridIndex {
            tree: RTree::bulk_load(entries),
        }
    }

    pub fn len(&self) -> usize {
        self.tree.size()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.size() == 0
    }

    /// The communities the grids belong to, each once, in code order.
    pub fn communities(&self) -> Vec<crate::codes::OrgCode> {
        let communities: std::collections::BTreeSet<_> =
            self.tree.iter().map(|e| e.code.community()).collect();
        communities.into_iter().collect()
    }

    /// The grid containing the point (longitude, latitude). Points on a shared edge go to the lowest code,
    /// so the answer does not depend on the order the grids were loaded in.
    pub fn locate(&self, longitude: f64, latitude: f64) -> Option<GridCode> {
        if !longitude.is_finite() || !latitude.is_finite() {
            return None;
        }
        let point = Point::new(longitude, latitude);
        self.tree
            .locate_in_envelope_intersecting(&AABB::from_point([longitude, latitude]))
            // Intersects includes the boundary itself, so points on an edge still find a grid.
            .filter(|entry| entry.boundary.intersects(&point))
            .map(|entry| entry.code)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{Polygon, polygon};

    fn square(x: f64, y: f64, size: f64) -> MultiPolygon<f64> {
        let p: Polygon<f64> = polygon![
            (x: x, y: y),
            (x: x + size, y: y),
            (x: x + size, y: y + size),
            (x: x, y: y + size),
            (x: x, y: y),
        ];
        MultiPolygon(vec![p])
    }

    fn code(s: &str) -> GridCode {
        s.parse().unwrap()
    }

    #[test]
    fn points_resolve_to_the_grid_that_contains_them() {
        let index = GridIndex::new([
            (code("350205002006001"), square(118.00, 24.50, 0.01)),
            (code("350205002006002"), square(118.01, 24.50, 0.01)),
            (code("350205002007001"), square(118.00, 24.51, 0.01)),
        ]);
        assert_eq!(index.len(), 3);
        assert_eq!(index.locate(118.005, 24.505), Some(code("350205002006001")));
        assert_eq!(index.locate(118.015, 24.505), Some(code("350205002006002")));
        assert_eq!(index.locate(118.005, 24.515), Some(code("350205002007001")));
        // On the shared edge: the lower code, whatever the load order.
        assert_eq!(index.locate(118.01, 24.505), Some(code("350205002006001")));
    }

    #[test]
    fn points_outside_every_grid_resolve_to_nothing() {
        let index = GridIndex::new([(code("350205002006001"), square(118.00, 24.50, 0.01))]);
        assert_eq!(index.locate(0.0, 0.0), None);
        assert_eq!(index.locate(118.02, 24.505), None);
        assert_eq!(index.locate(f64::NAN, 24.505), None);
        assert_eq!(GridIndex::default().locate(118.005, 24.505), None);
    }

    #[test]
    fn holes_are_outside() {
        let outer = geo::LineString::from(vec![
            (0.0, 0.0),
            (10.0, 0.0),
            (10.0, 10.0),
            (0.0, 10.0),
            (0.0, 0.0),
        ]);
        let hole = geo::LineString::from(vec![
            (4.0, 4.0),
            (6.0, 4.0),
            (6.0, 6.0),
            (4.0, 6.0),
            (4.0, 4.0),
        ]);
        let index = GridIndex::new([(
            code("350205002006001"),
            MultiPolygon(vec![Polygon::new(outer, vec![hole])]),
        )]);
        assert_eq!(index.locate(5.0, 5.0), None);
        assert_eq!(index.locate(2.0, 2.0), Some(code("350205002006001")));
    }
}
