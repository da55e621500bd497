//! `sde load <dir>`: client-side COPY of the CSV SDE into killboard.sde_*.
//!
//! Each file is streamed into a temporary all-text table shaped by its own
//! header (so extra upstream columns do not break the load), then typed
//! INSERT … SELECTs replace the rows — all in one transaction, so readers see
//! the old SDE or the new one, never a mix. DELETE rather than TRUNCATE keeps
//! readers unblocked and fires the statement triggers that invalidate the
//! backends' SDE caches.

use std::path::Path;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::AsyncReadExt;

use crate::{db, Error, Result};

/// invTypes-nodescription.csv has no header; these are its columns.
const INV_TYPES_COLUMNS: [&str; 14] = [
    "typeID",
    "groupID",
    "typeName",
    "mass",
    "volume",
    "capacity",
    "portionSize",
    "raceID",
    "basePrice",
    "published",
    "marketGroupID",
    "iconID",
    "soundID",
    "graphicID",
];

struct CsvFile {
    file: &'static str,
    table: &'static str,
    required: &'static [&'static str],
}

const FILES: &[CsvFile] = &[
    CsvFile {
        file: "invCategories.csv",
        table: "categories",
        required: &["categoryID", "categoryName", "published"],
    },
    CsvFile {
        file: "invGroups.csv",
        table: "groups",
        required: &["groupID", "categoryID", "groupName", "published"],
    },
    CsvFile {
        file: "invMetaGroups.csv",
        table: "meta_groups",
        required: &["metaGroupID", "metaGroupName"],
    },
    CsvFile {
        file: "invMarketGroups.csv",
        table: "market_groups",
        required: &[
            "marketGroupID",
            "parentGroupID",
            "marketGroupName",
            "hasTypes",
        ],
    },
    CsvFile {
        file: "invTypes-nodescription.csv",
        table: "types",
        required: &[],
    },
    CsvFile {
        file: "invMetaTypes.csv",
        table: "meta_types",
        required: &["typeID", "parentTypeID", "metaGroupID"],
    },
    CsvFile {
        file: "chrFactions.csv",
        table: "factions",
        required: &[
            "factionID",
            "factionName",
            "corporationID",
            "militiaCorporationID",
        ],
    },
    CsvFile {
        file: "mapRegions.csv",
        table: "regions",
        required: &["regionID", "regionName", "factionID"],
    },
    CsvFile {
        file: "mapConstellations.csv",
        table: "constellations",
        required: &[
            "regionID",
            "constellationID",
            "constellationName",
            "factionID",
        ],
    },
    CsvFile {
        file: "mapSolarSystems.csv",
        table: "systems",
        required: &[
            "regionID",
            "constellationID",
            "solarSystemID",
            "solarSystemName",
            "security",
            "securityClass",
            "factionID",
        ],
    },
    CsvFile {
        file: "mapSolarSystemJumps.csv",
        table: "jumps",
        required: &["fromSolarSystemID", "toSolarSystemID"],
    },
];

/// Typed copy from the staging tables. Empty CSV fields are NULL (COPY csv
/// default), invTypes writes NULL as \N; both end up NULL here.
const REPLACE_SQL: &str = r#"
DELETE FROM killboard.sde_jumps;
DELETE FROM killboard.sde_systems;
DELETE FROM killboard.sde_constellations;
DELETE FROM killboard.sde_regions;
DELETE FROM killboard.sde_factions;
DELETE FROM killboard.sde_types;
DELETE FROM killboard.sde_market_groups;
DELETE FROM killboard.sde_meta_groups;
DELETE FROM killboard.sde_groups;
DELETE FROM killboard.sde_categories;

INSERT INTO killboard.sde_categories (category_id, name, published)
SELECT "categoryID"::integer, coalesce("categoryName", ''), lower(coalesce("published", '0')) IN ('1', 'true', 't')
  FROM pg_temp.sde_categories;

INSERT INTO killboard.sde_groups (group_id, category_id, name, published)
SELECT "groupID"::integer, "categoryID"::integer, coalesce("groupName", ''), lower(coalesce("published", '0')) IN ('1', 'true', 't')
  FROM pg_temp.sde_groups;

INSERT INTO killboard.sde_meta_groups (meta_group_id, name)
SELECT "metaGroupID"::integer, coalesce("metaGroupName", '') FROM pg_temp.sde_meta_groups;

INSERT INTO killboard.sde_market_groups (market_group_id, parent_group_id, name, has_types)
SELECT "marketGroupID"::integer, nullif("parentGroupID", '')::integer, coalesce("marketGroupName", ''),
       lower(coalesce("hasTypes", '0')) IN ('1', 'true', 't')
  FROM pg_temp.sde_market_groups;

INSERT INTO killboard.sde_types (type_id, group_id, name, mass, volume, capacity, portion_size, race_id,
                                 base_price, published, market_group_id, meta_group_id, parent_type_id)
SELECT t."typeID"::integer, t."groupID"::integer, coalesce(t."typeName", ''),
       nullif(t."mass", '')::double precision, nullif(t."volume", '')::double precision,
       nullif(t."capacity", '')::double precision, nullif(t."portionSize", '')::integer,
       nullif(t."raceID", '')::integer, nullif(t."basePrice", '')::numeric,
       lower(coalesce(t."published", '0')) IN ('1', 'true', 't'),
       nullif(t."marketGroupID", '')::integer,
       nullif(m."metaGroupID", '')::integer, nullif(m."parentTypeID", '')::integer
  FROM pg_temp.sde_types t
  LEFT JOIN pg_temp.sde_meta_types m ON m."typeID" = t."typeID";

INSERT INTO killboard.sde_factions (faction_id, name, corporation_id, militia_corporation_id)
SELECT "factionID"::integer, coalesce("factionName", ''), nullif("corporationID", '')::integer,
       nullif("militiaCorporationID", '')::integer
  FROM pg_temp.sde_factions;

INSERT INTO killboard.sde_regions (region_id, name, faction_id)
SELECT "regionID"::integer, coalesce("regionName", ''), nullif("factionID", '')::integer FROM pg_temp.sde_regions;

INSERT INTO killboard.sde_constellations (constellation_id, region_id, name, faction_id)
SELECT "constellationID"::integer, "regionID"::integer, coalesce("constellationName", ''), nullif("factionID", '')::integer
  FROM pg_temp.sde_constellations;

INSERT INTO killboard.sde_systems (solar_system_id, constellation_id, region_id, name, security, security_class, faction_id)
SELECT "solarSystemID"::integer, "constellationID"::integer, "regionID"::integer, coalesce("solarSystemName", ''),
       "security"::double precision, nullif("securityClass", ''), nullif("factionID", '')::integer
  FROM pg_temp.sde_systems;

-- Stargates work both ways; the file may list one direction or both.
INSERT INTO killboard.sde_jumps (from_system_id, to_system_id)
SELECT DISTINCT a, b FROM (
    SELECT "fromSolarSystemID"::integer AS a, "toSolarSystemID"::integer AS b FROM pg_temp.sde_jumps
    UNION ALL
    SELECT "toSolarSystemID"::integer, "fromSolarSystemID"::integer FROM pg_temp.sde_jumps
) j
ON CONFLICT DO NOTHING;
"#;

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn read_header(path: &Path) -> Result<Vec<String>> {
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = f.read(&mut buf).await.map_err(io)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let line = text
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches('\u{feff}');
    Ok(line
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect())
}

pub async fn load(dir: &Path, database_url: &str) -> Result<Vec<(String, i64)>> {
    let mut client = db::connect(database_url).await?;
    let tx = client.transaction().await?;
    for f in FILES {
        let path = dir.join(f.file);
        let (columns, header) = if f.table == "types" {
            let first = read_header(&path).await?;
            let has_header = first
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case("typeID"));
            if has_header {
                (first, true)
            } else {
                (
                    INV_TYPES_COLUMNS.iter().map(|s| s.to_string()).collect(),
                    false,
                )
            }
        } else {
            (read_header(&path).await?, true)
        };
        for req in f.required {
            if !columns.iter().any(|c| c == req) {
                return Err(Error::Permanent(format!(
                    "{}: missing column {req}",
                    path.display()
                )));
            }
        }
        let cols: Vec<String> = columns
            .iter()
            .map(|c| format!("{} text", quote_ident(c)))
            .collect();
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE sde_{} ({}) ON COMMIT DROP",
            f.table,
            cols.join(", ")
        ))
        .await?;
        let null = if f.table == "types" {
            ", NULL '\\N'"
        } else {
            ""
        };
        let copy = format!(
            "COPY pg_temp.sde_{} FROM STDIN WITH (FORMAT csv, HEADER {}{null})",
            f.table,
            if header { "true" } else { "false" }
        );
        let sink = tx.copy_in(&copy).await?;
        futures_util::pin_mut!(sink);
        let io = |e| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            sink.send(Bytes::copy_from_slice(&buf[..n])).await?;
        }
        let rows = sink.finish().await?;
        tracing::info!(file = f.file, rows, "staged");
    }
    tx.batch_execute(REPLACE_SQL).await?;
    let mut counts = Vec::new();
    for t in [
        "categories",
        "groups",
        "meta_groups",
        "market_groups",
        "types",
        "factions",
        "regions",
        "constellations",
        "systems",
        "jumps",
    ] {
        // Table names come from the fixed list above, never from input.
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM killboard.sde_{t}"), &[])
            .await?
            .get(0);
        counts.push((format!("sde_{t}"), n));
    }
    tx.commit().await?;
    Ok(counts)
}
