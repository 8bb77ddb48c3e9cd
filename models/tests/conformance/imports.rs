//! Bulk imports' records and rejected rows ([`ImportStore`]).

use std::sync::Arc;

use uuid::Uuid;

use crm_models::import::{
    Import, ImportCounts, ImportFormat, ImportKind, ImportState, RejectedRow,
};
use crm_models::store::{Store, StoreError};
use crm_models::time;

fn import(key: Option<&str>) -> Import {
    let now = time::now();
    Import {
        id: Uuid::now_v7(),
        kind: ImportKind::Customers,
        format: ImportFormat::Csv,
        state: ImportState::Queued,
        dry_run: false,
        idempotency_key: key.map(str::to_string),
        mapping: [("Mobile".to_string(), "phones".to_string())].into(),
        region: Some("SG".into()),
        created_by: "user:1".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        bytes_total: Some(1000),
        bytes_read: 0,
        columns: vec!["name".into(), "Mobile".into()],
        counts: ImportCounts::default(),
        error: None,
    }
}

fn rejected(import: &Import, row: u64, error: &str) -> RejectedRow {
    RejectedRow {
        import_id: import.id,
        row,
        cells: vec![format!("name {row}"), "123".into()],
        error: error.into(),
    }
}

pub async fn imports_insert_get_and_idempotency_key(store: Arc<dyn Store>) {
    let first = import(Some("key-1"));
    let (stored, created) = store.insert_import(&first).await.unwrap();
    assert!(created);
    assert_eq!(stored, first);
    assert_eq!(
        store.get_import(first.id).await.unwrap(),
        Some(first.clone())
    );

    // The same key answers the first import and writes nothing.
    let again = import(Some("key-1"));
    let (stored, created) = store.insert_import(&again).await.unwrap();
    assert!(!created);
    assert_eq!(stored.id, first.id);
    assert_eq!(store.get_import(again.id).await.unwrap(), None);

    // Without a key, or with another, a new import.
    let keyless = import(None);
    assert!(store.insert_import(&keyless).await.unwrap().1);
    let other = import(Some("key-2"));
    assert!(store.insert_import(&other).await.unwrap().1);
    // The same id twice is a conflict.
    assert!(matches!(
        store.insert_import(&keyless).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_import(Uuid::now_v7()).await.unwrap(), None);
}

pub async fn import_chunks_keep_rejected_rows_once_and_resume_state(store: Arc<dyn Store>) {
    let mut imp = import(None);
    store.insert_import(&imp).await.unwrap();
    let other = import(None);
    store.insert_import(&other).await.unwrap();

    imp.state = ImportState::Running;
    imp.counts.rows_read = 500;
    imp.counts.created = 490;
    imp.counts.rejected = 3;
    imp.bytes_read = 400;
    let chunk = vec![
        rejected(&imp, 7, "phones: not a phone number"),
        rejected(&imp, 100, "emails: not an email address"),
        rejected(&imp, 2, "name: too long"),
    ];
    store.save_import_chunk(&imp, &chunk).await.unwrap();
    // Applying the same chunk again changes nothing.
    store.save_import_chunk(&imp, &chunk).await.unwrap();
    store
        .save_import_chunk(&other, &[rejected(&other, 1, "x: y")])
        .await
        .unwrap();

    assert_eq!(store.get_import(imp.id).await.unwrap(), Some(imp.clone()));
    let rows = store.rejected_rows(imp.id, None, 10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![2, 7, 100]
    );
    assert_eq!(rows[1], chunk[0]);
    let page = store.rejected_rows(imp.id, Some(2), 1).await.unwrap();
    assert_eq!(page.iter().map(|r| r.row).collect::<Vec<_>>(), vec![7]);
    assert!(store
        .rejected_rows(imp.id, Some(100), 10)
        .await
        .unwrap()
        .is_empty());

    // Unfinished imports, oldest first; a finished one is left out.
    let unfinished: Vec<Uuid> = store
        .unfinished_imports()
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(unfinished, vec![imp.id, other.id]);
    imp.state = ImportState::Completed;
    imp.finished_at = Some(time::now());
    store.save_import_chunk(&imp, &[]).await.unwrap();
    let unfinished: Vec<Uuid> = store
        .unfinished_imports()
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(unfinished, vec![other.id]);

    // A chunk of an import that does not exist.
    assert_eq!(
        store.save_import_chunk(&import(None), &[]).await,
        Err(StoreError::NotFound)
    );
}
