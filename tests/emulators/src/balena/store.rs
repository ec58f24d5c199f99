//! The emulator's database: one table per resource, who may see which row, and the writes
//! with pinejs' checks (types, required fields, foreign keys, unique constraints) and balena's
//! side effects (a device gets a service install for every service of its application).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

use super::schema::{Kind, Nav, Res};
use crate::common::time::Utc;

/// A stored row: field name to JSON value (integers for ids and foreign keys, strings for text
/// and timestamps, null for an unset optional field).
pub type Row = Map<String, Value>;

#[derive(Debug, Default, Clone)]
pub struct Table {
    pub rows: BTreeMap<i64, Row>,
    next_id: i64,
}

/// Who is asking: a user key sees everything, a device key only what belongs to its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// A fleet member's user key: sees and may write everything.
    All,
    /// A fleet member with the read-only observer role: sees everything, may write nothing.
    Observer,
    /// A device's own key: its device and what belongs to it.
    Device { device: i64, app: Option<i64> },
    /// A frozen device's own key: balenaCloud hides everything from it.
    Nothing,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// 400: bad body, unknown field, wrong type, a variable value with a line break.
    BadRequest(String),
    /// 409: a unique constraint would be violated, or a foreign key names no row.
    Conflict(String),
    /// 401: this key may not write this resource at all.
    Unauthorized,
}

#[derive(Debug, Default, Clone)]
pub struct Store {
    tables: [Table; 7],
}

/// The integer in `row[field]`, if any.
pub fn int_field(row: &Row, field: &str) -> Option<i64> {
    row.get(field).and_then(Value::as_i64)
}

impl Store {
    pub fn table(&self, res: Res) -> &Table {
        &self.tables[res.index()]
    }

    fn table_mut(&mut self, res: Res) -> &mut Table {
        &mut self.tables[res.index()]
    }

    pub fn row(&self, res: Res, id: i64) -> Option<&Row> {
        self.table(res).rows.get(&id)
    }

    /// The viewer for a device key bound to `device`.
    pub fn device_viewer(&self, device: i64) -> Viewer {
        let app = self
            .row(Res::Device, device)
            .and_then(|d| int_field(d, "belongs_to__application"));
        Viewer::Device { device, app }
    }

    /// Whether `viewer` can see `row` of `res`.
    pub fn visible(&self, viewer: &Viewer, res: Res, row: &Row) -> bool {
        let (device, app) = match *viewer {
            Viewer::All | Viewer::Observer => return true,
            Viewer::Nothing => return false,
            Viewer::Device { device, app } => (device, app),
        };
        if self.row(Res::Device, device).is_none() {
            return false;
        }
        let is = |field: &str, want: Option<i64>| want.is_some() && int_field(row, field) == want;
        match res {
            Res::Application => is("id", app),
            Res::Device => is("id", Some(device)),
            Res::Service => is("application", app),
            Res::ServiceInstall | Res::DeviceEnvVar | Res::DeviceTag => is("device", Some(device)),
            Res::DeviceServiceEnvVar => int_field(row, "service_install")
                .and_then(|si| self.row(Res::ServiceInstall, si))
                .is_some_and(|si| int_field(si, "device") == Some(device)),
        }
    }

    /// The row `id` of `res` if `viewer` can see it.
    pub fn visible_row(&self, viewer: &Viewer, res: Res, id: i64) -> Option<&Row> {
        self.row(res, id)
            .filter(|row| self.visible(viewer, res, row))
    }

    /// The rows reached from `row` (of `res`) over `nav`, as far as `viewer` can see.
    pub fn navigate<'a>(&'a self, viewer: &Viewer, row: &Row, nav: Nav) -> Vec<&'a Row> {
        match nav {
            Nav::ToOne { fk, target } => int_field(row, fk)
                .and_then(|id| self.visible_row(viewer, target, id))
                .into_iter()
                .collect(),
            Nav::ToMany { child, fk } => {
                let Some(id) = int_field(row, "id") else {
                    return Vec::new();
                };
                self.table(child)
                    .rows
                    .values()
                    .filter(|c| int_field(c, fk) == Some(id) && self.visible(viewer, child, c))
                    .collect()
            }
        }
    }

    /// Creates a row from a POST body; returns its id.
    pub fn insert(
        &mut self,
        viewer: &Viewer,
        res: Res,
        body: &Map<String, Value>,
    ) -> Result<i64, WriteError> {
        if !may_write(viewer, res) {
            return Err(WriteError::Unauthorized);
        }
        check_variable_value(res, body)?;
        check_device_tag(res, body)?;
        let mut row = Row::new();
        for (name, value) in body {
            let value = self.check_value(viewer, res, name, value)?;
            row.insert(name.clone(), value);
        }
        for field in res.def().fields {
            if row.contains_key(field.name) {
                continue;
            }
            if field.required {
                return Err(WriteError::BadRequest(format!(
                    "{}.{} is required and may not be null",
                    res.name(),
                    field.name
                )));
            }
            row.insert(field.name.to_string(), Value::Null);
        }
        self.fill_defaults(res, &mut row);
        self.check_unique(res, None, &row)?;
        if !self.visible(viewer, res, &row) {
            return Err(WriteError::Unauthorized);
        }
        Ok(self.insert_row(res, row))
    }

    /// Stores a row that passed the checks: assigns its id and `created_at`, then runs balena's
    /// side effects.
    fn insert_row(&mut self, res: Res, mut row: Row) -> i64 {
        let table = self.table_mut(res);
        table.next_id += 1;
        let id = table.next_id;
        row.insert("id".into(), json!(id));
        let now = json!(now_iso8601());
        row.insert("created_at".into(), now.clone());
        row.insert("modified_at".into(), now);
        table.rows.insert(id, row);
        match res {
            Res::Device => {
                let app = self
                    .row(Res::Device, id)
                    .and_then(|d| int_field(d, "belongs_to__application"));
                let services = self.ids_where(Res::Service, "application", app);
                for service in services {
                    self.install(id, service);
                }
            }
            Res::Service => {
                let app = self
                    .row(Res::Service, id)
                    .and_then(|s| int_field(s, "application"));
                let devices = self.ids_where(Res::Device, "belongs_to__application", app);
                for device in devices {
                    self.install(device, id);
                }
            }
            _ => {}
        }
        id
    }

    fn install(&mut self, device: i64, service: i64) {
        let exists = self.table(Res::ServiceInstall).rows.values().any(|si| {
            int_field(si, "device") == Some(device)
                && int_field(si, "installs__service") == Some(service)
        });
        if !exists {
            let mut row = Row::new();
            row.insert("device".into(), json!(device));
            row.insert("installs__service".into(), json!(service));
            self.insert_row(Res::ServiceInstall, row);
        }
    }

    /// Ids of the rows of `res` whose `field` equals `value` (none when `value` is `None`).
    pub fn ids_where(&self, res: Res, field: &str, value: Option<i64>) -> Vec<i64> {
        let Some(value) = value else {
            return Vec::new();
        };
        self.table(res)
            .rows
            .iter()
            .filter(|(_, row)| int_field(row, field) == Some(value))
            .map(|(id, _)| *id)
            .collect()
    }

    fn fill_defaults(&self, res: Res, row: &mut Row) {
        match res {
            Res::Application if row.get("slug").is_none_or(Value::is_null) => {
                let name = row
                    .get("app_name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                row.insert(
                    "slug".into(),
                    json!(format!("admin/{}", name.to_lowercase())),
                );
            }
            Res::Device if row.get("device_name").is_none_or(Value::is_null) => {
                let uuid = row.get("uuid").and_then(Value::as_str).unwrap_or_default();
                let short: String = uuid.chars().take(7).collect();
                row.insert("device_name".into(), json!(format!("device-{short}")));
            }
            _ => {}
        }
    }

    /// Applies a PATCH body to the rows `ids` of `res` (already filtered to what the viewer
    /// sees). All or nothing.
    pub fn update(
        &mut self,
        viewer: &Viewer,
        res: Res,
        ids: &[i64],
        body: &Map<String, Value>,
    ) -> Result<(), WriteError> {
        // pinejs refuses these before looking for the rows, so also when none match.
        if body.is_empty() {
            return Err(WriteError::BadRequest("No fields to update".into()));
        }
        check_variable_value(res, body)?;
        check_device_tag(res, body)?;
        let mut changes = Row::new();
        for (name, value) in body {
            let value = self.check_value(viewer, res, name, value)?;
            let required = res.field(name).is_some_and(|f| f.required);
            if required && value.is_null() {
                return Err(WriteError::BadRequest(format!(
                    "{}.{name} may not be null",
                    res.name()
                )));
            }
            changes.insert(name.clone(), value);
        }
        if ids.is_empty() {
            return Ok(());
        }
        if !may_write(viewer, res) {
            return Err(WriteError::Unauthorized);
        }
        changes.insert("modified_at".into(), json!(now_iso8601()));
        let mut updated = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self.row(res, *id) {
                let mut row = row.clone();
                for (k, v) in &changes {
                    row.insert(k.clone(), v.clone());
                }
                updated.push((*id, row));
            }
        }
        self.check_unique_after_update(res, &updated)?;
        let table = self.table_mut(res);
        for (id, row) in updated {
            table.rows.insert(id, row);
        }
        Ok(())
    }

    /// Deletes the rows `ids` of `res` and, as balena's cascades do, every row that depends on
    /// them.
    pub fn delete(&mut self, viewer: &Viewer, res: Res, ids: &[i64]) -> Result<(), WriteError> {
        if !ids.is_empty() && !may_write(viewer, res) {
            return Err(WriteError::Unauthorized);
        }
        let mut pending: Vec<(Res, i64)> = ids.iter().map(|id| (res, *id)).collect();
        while let Some((res, id)) = pending.pop() {
            if self.table_mut(res).rows.remove(&id).is_none() {
                continue;
            }
            for rev in res.def().reverse {
                for child in self.ids_where(rev.child, rev.fk, Some(id)) {
                    pending.push((rev.child, child));
                }
            }
        }
        Ok(())
    }

    /// Checks one field of a write body and returns the value to store.
    fn check_value(
        &self,
        viewer: &Viewer,
        res: Res,
        name: &str,
        value: &Value,
    ) -> Result<Value, WriteError> {
        let bad = |msg: String| Err(WriteError::BadRequest(msg));
        let Some(field) = res.field(name) else {
            return bad(format!(
                "Unknown field {name:?} of resource {:?}",
                res.name()
            ));
        };
        if !field.writable {
            return bad(format!(
                "Field {name:?} of resource {:?} cannot be written",
                res.name()
            ));
        }
        if value.is_null() {
            return Ok(Value::Null);
        }
        match field.kind {
            Kind::Int => match value.as_i64() {
                Some(n) => Ok(json!(n)),
                None => bad(format!("{}.{name} must be an integer", res.name())),
            },
            Kind::Text | Kind::Timestamp => match value {
                Value::String(s) => Ok(json!(s)),
                _ => bad(format!("{}.{name} must be a string", res.name())),
            },
            Kind::Fk(target) => {
                let Some(id) = fk_id(value) else {
                    return bad(format!("{}.{name} must be an id", res.name()));
                };
                if self.visible_row(viewer, target, id).is_some() {
                    return Ok(json!(id));
                }
                // balena's own checks run first and answer 401 for what the key cannot see
                // (a device key, any row but its own) and for a service variable's missing
                // install (looked up before the insert); the database's foreign key answers
                // the rest.
                match viewer {
                    Viewer::All if target != Res::ServiceInstall => Err(WriteError::Conflict(
                        format!("Data is referenced by {name}."),
                    )),
                    _ => Err(WriteError::Unauthorized),
                }
            }
        }
    }

    fn check_unique(&self, res: Res, skip: Option<i64>, row: &Row) -> Result<(), WriteError> {
        for unique in res.def().unique {
            let Some(key) = unique_key(unique, row) else {
                continue;
            };
            let clash = self.table(res).rows.iter().any(|(id, other)| {
                Some(*id) != skip && unique_key(unique, other).as_ref() == Some(&key)
            });
            if clash {
                return Err(unique_error(unique));
            }
        }
        Ok(())
    }

    fn check_unique_after_update(
        &self,
        res: Res,
        updated: &[(i64, Row)],
    ) -> Result<(), WriteError> {
        let new_rows: BTreeMap<i64, &Row> = updated.iter().map(|(id, row)| (*id, row)).collect();
        for unique in res.def().unique {
            let mut seen = HashSet::new();
            for (id, row) in &self.table(res).rows {
                let row = new_rows.get(id).copied().unwrap_or(row);
                if let Some(key) = unique_key(unique, row)
                    && !seen.insert(key)
                {
                    return Err(unique_error(unique));
                }
            }
        }
        Ok(())
    }
}

/// Which resources a key may write at all. A device key writes its own variables and tags (and
/// its own device row); everything else needs a user key.
fn may_write(viewer: &Viewer, res: Res) -> bool {
    match viewer {
        Viewer::All => true,
        Viewer::Observer | Viewer::Nothing => false,
        Viewer::Device { .. } => {
            matches!(
                res,
                Res::Device | Res::DeviceEnvVar | Res::DeviceServiceEnvVar | Res::DeviceTag
            )
        }
    }
}

/// A foreign key as balena clients send it: `12`, `{"__id": 12}` or `{"@odata.id": ...}` with
/// the id in parentheses at its end.
fn fk_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::Object(o) => {
            if let Some(id) = o.get("__id") {
                return id.as_i64();
            }
            let odata_id = o.get("@odata.id")?.as_str()?;
            let inner = odata_id.strip_suffix(')')?;
            let open = inner.rfind('(')?;
            inner[open + 1..].parse().ok()
        }
        _ => None,
    }
}

fn unique_key(fields: &[&str], row: &Row) -> Option<Vec<String>> {
    fields
        .iter()
        .map(|f| match row.get(*f) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.to_string()),
        })
        .collect()
}

/// The 409 of a unique constraint, worded as balena words it: `"device" and "tag_key" must be
/// unique.` balena's index on service variables is on (device, service, name), which the
/// emulator holds as (service_install, name).
fn unique_error(fields: &[&str]) -> WriteError {
    let words: Vec<String> = fields
        .iter()
        .flat_map(|f| match *f {
            "service_install" => vec!["device", "service"],
            f => vec![f],
        })
        .map(|f| format!("\"{f}\""))
        .collect();
    WriteError::Conflict(format!("{} must be unique.", words.join(" and ")))
}

/// balena refuses variable values with line breaks (devices read variables as lines).
fn check_variable_value(res: Res, body: &Map<String, Value>) -> Result<(), WriteError> {
    let is_variable = matches!(res, Res::DeviceEnvVar | Res::DeviceServiceEnvVar);
    let value = body.get("value").and_then(Value::as_str).unwrap_or("");
    if is_variable && value.contains(['\n', '\r']) {
        return Err(WriteError::BadRequest(
            "Variable values cannot contain line break characters".into(),
        ));
    }
    Ok(())
}

/// balena's rules for device tags, worded as it words them: a key of 1 to 100 characters
/// without whitespace, outside the reserved `io.balena.`/`io.resin.` namespaces; a value of at
/// most 10,000 characters. Checked on the fields a write sets.
fn check_device_tag(res: Res, body: &Map<String, Value>) -> Result<(), WriteError> {
    if res != Res::DeviceTag {
        return Ok(());
    }
    if let Some(key) = body.get("tag_key").and_then(Value::as_str) {
        if key.chars().any(char::is_whitespace) {
            return Err(WriteError::BadRequest(
                "Tag keys cannot contain whitespace.".into(),
            ));
        }
        for reserved in ["io.balena.", "io.resin."] {
            if key.starts_with(reserved) {
                return Err(WriteError::BadRequest(format!(
                    "Tag keys beginning with {reserved} are reserved."
                )));
            }
        }
        if key.is_empty() || key.chars().count() > 100 {
            return Err(WriteError::BadRequest(
                "It is necessary that each device tag has a tag key that has a Length (Type) that is greater than 0 and is less than or equal to 100.".into(),
            ));
        }
    }
    if let Some(value) = body.get("value").and_then(Value::as_str)
        && value.chars().count() > 10_000
    {
        return Err(WriteError::BadRequest(
            "It is necessary that each device tag has a value that has a Length (Type) that is less than or equal to 10000.".into(),
        ));
    }
    Ok(())
}

/// The current time as `2024-05-01T12:34:56.789Z`.
pub fn now_iso8601() -> String {
    Utc::now().iso8601(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn devices_get_installs_and_cascade() {
        let mut s = Store::default();
        let all = Viewer::All;
        let app = s
            .insert(&all, Res::Application, &body(json!({"app_name": "A"})))
            .unwrap();
        let svc = s
            .insert(
                &all,
                Res::Service,
                &body(json!({"application": app, "service_name": "main"})),
            )
            .unwrap();
        let dev = s
            .insert(
                &all,
                Res::Device,
                &body(json!({"uuid": "u1", "belongs_to__application": app})),
            )
            .unwrap();
        let sis = s.ids_where(Res::ServiceInstall, "device", Some(dev));
        assert_eq!(sis.len(), 1);
        s.insert(
            &all,
            Res::Service,
            &body(json!({"application": {"__id": app}, "service_name": "other"})),
        )
        .unwrap();
        assert_eq!(
            s.ids_where(Res::ServiceInstall, "device", Some(dev)).len(),
            2
        );
        let si = sis[0];
        s.insert(
            &all,
            Res::DeviceServiceEnvVar,
            &body(json!({"service_install": si, "name": "A", "value": "1"})),
        )
        .unwrap();
        let dup = s.insert(
            &all,
            Res::DeviceServiceEnvVar,
            &body(json!({"service_install": si, "name": "A", "value": "2"})),
        );
        assert!(matches!(dup, Err(WriteError::Conflict(_))));
        s.delete(&all, Res::Device, &[dev]).unwrap();
        assert!(s.table(Res::ServiceInstall).rows.is_empty());
        assert!(s.table(Res::DeviceServiceEnvVar).rows.is_empty());
        assert!(s.row(Res::Service, svc).is_some());
    }
}
