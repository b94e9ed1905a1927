//! Dataset registries in LLaMA-Factory's `dataset_info.json` layout, and dataset references in
//! run configs (a registry name, or an inline file spec).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::formats::{Columns, Formatting, Tags};
use super::DataError;

/// One entry of `dataset_info.json`. Hub and script sources are rejected with a clear message:
/// medrl never downloads at run time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    pub file_name: Option<String>,
    #[serde(default)]
    pub formatting: Formatting,
    #[serde(default)]
    pub columns: Columns,
    #[serde(default)]
    pub tags: Tags,
    // Accepted for compatibility; medrl does not use them.
    pub hf_hub_url: Option<String>,
    pub ms_hub_url: Option<String>,
    pub om_hub_url: Option<String>,
    pub script_url: Option<String>,
    pub cloud_file_name: Option<String>,
    pub ranking: Option<bool>,
    pub subset: Option<String>,
    pub split: Option<String>,
    pub folder: Option<String>,
    pub num_samples: Option<usize>,
}

/// A dataset reference in a run config: a registry name, or a file with its format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum DatasetRef {
    /// A name in `dataset_info.json` of the config's `dataset_dir`.
    Name(String),
    Inline(InlineDataset),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineDataset {
    /// A .json, .jsonl or .parquet file (relative paths are relative to `dataset_dir`).
    pub path: PathBuf,
    #[serde(default)]
    pub formatting: Formatting,
    #[serde(default)]
    pub columns: Columns,
    #[serde(default)]
    pub tags: Tags,
    /// A system prompt added to examples that have none.
    #[serde(default)]
    pub system: Option<String>,
}

/// A resolved dataset: a file and how to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    pub name: String,
    pub path: PathBuf,
    pub formatting: Formatting,
    pub columns: Columns,
    pub tags: Tags,
    pub system: Option<String>,
    /// Use at most this many rows (LLaMA-Factory's `num_samples`).
    pub num_samples: Option<usize>,
}

/// Parse `dir/dataset_info.json`.
pub fn load_registry(dir: &Path) -> Result<BTreeMap<String, DatasetInfo>, DataError> {
    let path = dir.join("dataset_info.json");
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::Io { path: path.clone(), source: e })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| DataError::File { path, msg: format!("key `{}`: {}", e.path(), e.inner()) })
}

/// Resolve a reference against `dataset_dir` (needed for names and relative paths).
pub fn resolve(r: &DatasetRef, dataset_dir: Option<&Path>) -> Result<DatasetSpec, DataError> {
    let base = dataset_dir.unwrap_or(Path::new("."));
    match r {
        DatasetRef::Inline(i) => Ok(DatasetSpec {
            name: i.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            path: base.join(&i.path),
            formatting: i.formatting,
            columns: i.columns.clone(),
            tags: i.tags.clone(),
            system: i.system.clone(),
            num_samples: None,
        }),
        DatasetRef::Name(name) => {
            let dir = dataset_dir.ok_or_else(|| DataError::Registry {
                name: name.clone(),
                msg: "a dataset given by name needs `data.dataset_dir` (the folder with dataset_info.json)".into(),
            })?;
            let reg = load_registry(dir)?;
            let info = reg.get(name).ok_or_else(|| DataError::Registry {
                name: name.clone(),
                msg: format!("not in {}; known: {:?}", dir.join("dataset_info.json").display(), reg.keys().collect::<Vec<_>>()),
            })?;
            if info.hf_hub_url.is_some() || info.ms_hub_url.is_some() || info.om_hub_url.is_some() || info.script_url.is_some() {
                if info.file_name.is_none() {
                    return Err(DataError::Registry {
                        name: name.clone(),
                        msg: "hub and script datasets are not fetched (medrl never downloads at run time); download the file and set `file_name`".into(),
                    });
                }
            }
            let file = info.file_name.as_ref().ok_or_else(|| DataError::Registry { name: name.clone(), msg: "no `file_name`".into() })?;
            if info.ranking == Some(true) {
                return Err(DataError::Registry { name: name.clone(), msg: "ranking (preference) datasets are not supported by SFT".into() });
            }
            Ok(DatasetSpec {
                name: name.clone(),
                path: dir.join(file),
                formatting: info.formatting,
                columns: info.columns.clone(),
                tags: info.tags.clone(),
                system: None,
                num_samples: info.num_samples,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_llamafactory_entries_and_rejects_hub_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("dataset_info.json"),
            r#"{"med": {"file_name": "med.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"},
                        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}},
               "hub": {"hf_hub_url": "org/data"}}"#,
        )
        .unwrap();
        let s = resolve(&DatasetRef::Name("med".into()), Some(d.path())).unwrap();
        assert_eq!(s.formatting, Formatting::Sharegpt);
        assert_eq!(s.path, d.path().join("med.json"));
        let e = resolve(&DatasetRef::Name("hub".into()), Some(d.path())).unwrap_err().to_string();
        assert!(e.contains("never downloads"), "{e}");
        let e = resolve(&DatasetRef::Name("nope".into()), Some(d.path())).unwrap_err().to_string();
        assert!(e.contains("known") && e.contains("med"), "{e}");
    }
}
