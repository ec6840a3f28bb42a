//! `wangge eval`: the assessment figures (综合评价) of a period from a street or district tier, as
//! a table to read or as CSV for Excel (UTF-8 with a byte-order mark, Chinese headers, rates as
//! percentages).

use std::io::Write;

use anyhow::{Context, bail};
use chrono::{DateTime, Datelike, Days, FixedOffset, NaiveDate, Utc};
use wangge_proto as pb;

use crate::credentials::Credentials;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The street's or the district's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    tier_url: String,
    /// The org to evaluate: a district, street or community code, or a grid code; unset, the
    /// tier's whole scope (as far as the caller may see it).
    #[arg(long, default_value = "")]
    org: String,
    /// The first day of the period (YYYY-MM-DD, China time); unset, the first of this month.
    #[arg(long)]
    from: Option<NaiveDate>,
    /// The last day of the period, included (YYYY-MM-DD, China time); unset, today.
    #[arg(long)]
    to: Option<NaiveDate>,
    /// Prints CSV (UTF-8 with BOM, Chinese headers) instead of a table.
    #[arg(long)]
    csv: bool,
    /// Only this kind of row; unset, all four, one section each.
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Whose token asks (one who may evaluate: a center's operator, duty chief, leader,
    /// supervisor or auditor; without --token, the demo's observer).
    #[arg(long, default_value = "observer")]
    persona: String,
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    tls: crate::tls::Tls,
}

/// A kind of row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Worker,
    Center,
    Department,
    Area,
}

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!("8 h is a valid offset"))
}

/// Midnight at the start of `day`, China time.
fn midnight(day: NaiveDate) -> anyhow::Result<prost_types::Timestamp> {
    let at = day
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(china()).single())
        .with_context(|| format!("no midnight on {day}"))?;
    Ok(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

fn shown(at: Option<prost_types::Timestamp>) -> String {
    at.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
        .map(|t| {
            t.with_timezone(&china())
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let today = Utc::now().with_timezone(&china()).date_naive();
    let from = match args.from {
        Some(day) => day,
        None => today.with_day(1).unwrap_or(today),
    };
    let to = args.to.unwrap_or(today);
    if to < from {
        bail!("--to {to} lies before --from {from}");
    }
    let after_to = to
        .checked_add_days(Days::new(1))
        .context("--to is too far ahead")?;
    let channel = args
        .tls
        .endpoint(&args.tier_url)?
        .connect()
        .await
        .with_context(|| format!("cannot reach {}", args.tier_url))?;
    let mut client = pb::evaluation_service_client::EvaluationServiceClient::new(channel);
    let request = pb::EvaluateRequest {
        org_code: args.org.clone(),
        from: Some(midnight(from)?),
        to: Some(midnight(after_to)?),
    };
    let response = client
        .evaluate(args.credentials.request(&args.persona, request)?)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let tables = tables(&response, args.kind);
    let mut out = std::io::stdout().lock();
    if args.csv {
        out.write_all(&csv(&tables)?)?;
    } else {
        writeln!(
            out,
            "综合评价 {} — {} (China time), {}",
            shown(response.from),
            shown(response.to),
            response.prefixes.join(", ")
        )?;
        for table in &tables {
            writeln!(out)?;
            write!(out, "{}", text(table))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Every table of `response`, as text to read (the demo prints them).
pub(crate) fn as_text(response: &pb::EvaluateResponse) -> String {
    let tables: Vec<String> = tables(response, None).iter().map(text).collect();
    tables.join("\n")
}

/// Midnight at the start of today, China time (the demo's period starts there).
pub(crate) fn start_of_today() -> anyhow::Result<prost_types::Timestamp> {
    midnight(Utc::now().with_timezone(&china()).date_naive())
}

/// One kind of row with its headers.
struct Table {
    title: &'static str,
    headers: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

fn count(n: u32) -> String {
    n.to_string()
}

/// A rate as a percentage with two decimals (Excel reads `85.71%` as the number 0.8571); empty
/// when it has no denominator.
fn percent(rate: Option<f64>) -> String {
    rate.map(|r| format!("{:.2}%", r * 100.0))
        .unwrap_or_default()
}

fn level(level: pb::AreaLevel) -> String {
    match level {
        pb::AreaLevel::Street => "街道",
        pb::AreaLevel::Community => "社区",
        pb::AreaLevel::Grid => "网格",
        pb::AreaLevel::Unspecified => "",
    }
    .to_owned()
}

fn tables(response: &pb::EvaluateResponse, only: Option<Kind>) -> Vec<Table> {
    let wanted = |kind| only.is_none_or(|only| only == kind);
    let mut tables = Vec::new();
    if wanted(Kind::Worker) {
        tables.push(Table {
            title: "网格员",
            headers: &[
                "网格员",
                "姓名",
                "上报数",
                "有效上报数",
                "有效上报率",
                "核实数",
                "按时核实数",
                "按时核实率",
                "核查数",
                "按时核查数",
                "按时核查率",
                "网格上报数",
                "漏报数",
                "漏报率",
            ],
            rows: response
                .workers
                .iter()
                .map(|w| {
                    vec![
                        w.worker_id.clone(),
                        w.name.clone(),
                        count(w.reports),
                        count(w.valid_reports),
                        percent(w.valid_rate),
                        count(w.verified),
                        count(w.verified_on_time),
                        percent(w.verified_on_time_rate),
                        count(w.checked),
                        count(w.checked_on_time),
                        percent(w.checked_on_time_rate),
                        count(w.grid_reports),
                        count(w.missed),
                        percent(w.missed_rate),
                    ]
                })
                .collect(),
        });
    }
    if wanted(Kind::Center) {
        tables.push(Table {
            title: "指挥中心",
            headers: &[
                "指挥中心",
                "名称",
                "立案数",
                "按时立案数",
                "按时立案率",
                "作废数",
                "准确立案率",
                "派遣数",
                "按时派遣数",
                "按时派遣率",
                "返工派遣数",
                "准确派遣率",
            ],
            rows: response
                .centers
                .iter()
                .map(|c| {
                    vec![
                        c.org_code.clone(),
                        c.name.clone(),
                        count(c.filed),
                        count(c.filed_on_time),
                        percent(c.filed_on_time_rate),
                        count(c.voided),
                        percent(c.filing_accuracy),
                        count(c.dispatched),
                        count(c.dispatched_on_time),
                        percent(c.dispatched_on_time_rate),
                        count(c.dispatch_reworked),
                        percent(c.dispatch_accuracy),
                    ]
                })
                .collect(),
        });
    }
    if wanted(Kind::Department) {
        tables.push(Table {
            title: "职能部门",
            headers: &[
                "部门",
                "名称",
                "派遣数",
                "已处置派遣数",
                "处置率",
                "处置数",
                "按期处置数",
                "按期处置率",
                "超期处置数",
                "返工数",
                "返工率",
            ],
            rows: response
                .departments
                .iter()
                .map(|d| {
                    vec![
                        d.department_code.clone(),
                        d.name.clone(),
                        count(d.dispatched),
                        count(d.dispatched_handled),
                        percent(d.handling_rate),
                        count(d.handled),
                        count(d.handled_on_time),
                        percent(d.handled_on_time_rate),
                        count(d.handled_late),
                        count(d.reworked),
                        percent(d.rework_rate),
                    ]
                })
                .collect(),
        });
    }
    if wanted(Kind::Area) {
        tables.push(Table {
            title: "区域",
            headers: &[
                "层级",
                "区域",
                "名称",
                "上报数",
                "已结案上报数",
                "结案率",
                "结案数",
                "按期结案数",
                "超期未结数",
                "按期结案率",
            ],
            rows: response
                .areas
                .iter()
                .map(|a| {
                    vec![
                        level(a.level()),
                        a.code.clone(),
                        a.name.clone(),
                        count(a.reported),
                        count(a.reported_closed),
                        percent(a.closing_rate),
                        count(a.closed),
                        count(a.closed_on_time),
                        count(a.open_overdue),
                        percent(a.closed_on_time_rate),
                    ]
                })
                .collect(),
        });
    }
    tables
}

/// The tables as CSV for Excel: a UTF-8 byte-order mark, then each table (headers, rows), a
/// blank line between tables.
fn csv(tables: &[Table]) -> anyhow::Result<Vec<u8>> {
    let mut out = "\u{feff}".as_bytes().to_vec();
    for (i, table) in tables.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let mut writer = ::csv::WriterBuilder::new()
            .terminator(::csv::Terminator::CRLF)
            .from_writer(Vec::new());
        writer.write_record(table.headers)?;
        for row in &table.rows {
            writer.write_record(row)?;
        }
        out.extend(writer.into_inner().context("csv buffer")?);
    }
    Ok(out)
}

/// Columns a character takes in a terminal: 2 for the wide CJK ranges, else 1.
fn columns(s: &str) -> usize {
    s.chars()
        .map(|c| match u32::from(c) {
            0x1100..=0x115F
            | 0x2E80..=0x303E
            | 0x3041..=0x33FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xA000..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// A table to read: its title, then aligned columns.
fn text(table: &Table) -> String {
    let mut widths: Vec<usize> = table.headers.iter().map(|h| columns(h)).collect();
    for row in &table.rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(columns(cell));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.push_str(&" ".repeat(width - columns(cell)));
        }
        line.truncate(line.trim_end().len());
        line.push('\n');
        line
    };
    let mut out = format!("{} ({})\n", table.title, table.rows.len());
    out.push_str(&line(&mut table.headers.iter().copied()));
    for row in &table.rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn response() -> pb::EvaluateResponse {
        pb::EvaluateResponse {
            workers: vec![pb::WorkerEvaluation {
                worker_id: "gw-1".into(),
                name: "王, \"小\"明".into(),
                reports: 7,
                valid_reports: 6,
                valid_rate: Some(6.0 / 7.0),
                ..Default::default()
            }],
            areas: vec![pb::AreaEvaluation {
                level: pb::AreaLevel::Grid as i32,
                code: "350205002006001".into(),
                name: "第1网格".into(),
                reported: 8,
                reported_closed: 5,
                closing_rate: Some(0.625),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn csv_has_a_bom_chinese_headers_and_quotes_what_needs_it() {
        let bytes = csv(&tables(&response(), None)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("\u{feff}网格员,姓名,上报数,有效上报数,有效上报率,"));
        assert!(
            text.contains("\r\ngw-1,\"王, \"\"小\"\"明\",7,6,85.71%,0,0,,0,0,,0,0,\r\n"),
            "{text}"
        );
        // Four sections, a blank line between them; a kind with no rows keeps its headers.
        assert_eq!(text.matches("\r\n\r\n").count(), 3);
        assert!(text.contains("\r\n\r\n指挥中心,名称,"));
        assert!(text.ends_with("网格,350205002006001,第1网格,8,5,62.50%,0,0,0,\r\n"));
        let areas =
            String::from_utf8(csv(&tables(&response(), Some(Kind::Area))).unwrap()).unwrap();
        assert!(areas.starts_with("\u{feff}层级,区域,名称,"));
        assert_eq!(areas.lines().count(), 2);
    }

    #[test]
    fn tables_align_wide_characters() {
        let table = text(&tables(&response(), Some(Kind::Area))[0]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "区域 (1)");
        // 区域 (4 columns) is padded to the grid code's 15.
        assert!(
            lines[1].starts_with("层级  区域             名称     上报数"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("网格  350205002006001  第1网格  8 "),
            "{table}"
        );
        assert_eq!(columns("第1网格"), 7);
    }
}
