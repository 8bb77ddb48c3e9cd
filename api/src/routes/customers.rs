//! Customers: create (or find by identifier), read, merge-patch, erase, list.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crm_models::customer::{Customer, CustomerStatus, Identifier};
use crm_models::ids::CustomerId;
use crm_models::service::{CustomerInput, CustomerPatch, FieldError, LinkMode, Resolution};
use crm_models::store::CustomerCursor;
use crm_models::time;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::input;
use super::pagination::{self, Page};
use crate::auth::{AdminOnly, CustomerWriter, Principal, Staff};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorCode, Problem};
use crate::state::AppState;

/// Most phones or emails one request may name.
const MAX_IDENTIFIERS_PER_KIND: usize = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_customer, list_customers))
        .routes(routes!(get_customer, patch_customer, delete_customer))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    pub name: Option<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    /// Any format; numbers without `+` use `CRM_DEFAULT_REGION`.
    #[serde(default)]
    pub phones: Vec<String>,
    /// Social network ids, e.g. `{"facebook": "123"}`.
    #[serde(default)]
    pub social: BTreeMap<String, String>,
    pub status: Option<CustomerStatus>,
    /// Staff only: `true` confirms that the customers owning these
    /// identifiers are this person, and merges them (into the oldest).
    /// Without it, an identifier another customer owns answers 409
    /// `identifier_taken`. API keys always link (their writes are evidence).
    pub merge: Option<bool>,
}

/// What an API key gets back from a write: ids and what happened, never
/// profile fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriteReceipt {
    pub id: CustomerId,
    /// `created`, `linked` (the identifiers named this customer; new ones
    /// were attached) or `merged` (they named several customers, now one).
    pub status: Resolution,
}

/// The answer to a create: the customer for staff, a receipt for a key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CreatedCustomer {
    Customer(Customer),
    Receipt(WriteReceipt),
}

/// How a write treats identifiers other customers own: a key's write is
/// evidence and links; a staff edit is refused (409 `identifier_taken`)
/// unless it says `"merge": true`.
fn link_mode(caller: &Principal, is_key: bool, merge: Option<bool>) -> LinkMode {
    if is_key {
        LinkMode::Auto
    } else if merge == Some(true) {
        LinkMode::Merge {
            user_id: caller.actor(),
        }
    } else {
        LinkMode::Confirm
    }
}

/// Creates a customer. For staff, an email, phone or social id that belongs
/// to a customer answers 409 `identifier_taken` with the owners, and nothing
/// is created; `"merge": true` attaches the new identifiers to the owner
/// instead (merging the owners when there are several). An API key's create
/// is evidence: it links to the owner (merging several into the oldest) and
/// answers ids and a status only.
#[utoipa::path(
    post, path = "/v1/customers", tag = "customers",
    request_body = CreateCustomer,
    responses(
        (status = 201, description = "Created: the customer (staff) or a `WriteReceipt` (API keys)", body = CreatedCustomer),
        (status = 200, description = "The identifiers named an existing customer (`\"merge\": true`, or an API key): new identifiers were attached", body = CreatedCustomer),
        (status = 403, description = "`forbidden`: an API key without the scope `customers:write`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`identifier_taken`: an identifier belongs to another customer (`customers`); merge with `POST /v1/customers/{id}/merge` or send `\"merge\": true`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_customer(
    State(state): State<AppState>,
    caller: CustomerWriter,
    ApiJson(body): ApiJson<CreateCustomer>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    check_count(body.emails.len(), "emails", &mut errors);
    check_count(body.phones.len(), "phones", &mut errors);
    let mut identifiers: Vec<Identifier> =
        input::phones(&body.phones, state.default_region, "phones", &mut errors)
            .into_iter()
            .map(Identifier::Phone)
            .collect();
    identifiers.extend(
        input::emails(&body.emails, "emails", &mut errors)
            .into_iter()
            .map(Identifier::Email),
    );
    identifiers.extend(input::social(&body.social, &mut errors));
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mode = link_mode(&caller.0, caller.is_key(), body.merge);
    let (customer, how) = state
        .crm
        .create_customer_with(
            CustomerInput {
                name: body.name,
                identifiers,
                status: body.status,
            },
            mode,
        )
        .await?;
    let status = if how == Resolution::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let answer = if caller.is_key() {
        CreatedCustomer::Receipt(WriteReceipt {
            id: customer.id,
            status: how,
        })
    } else {
        CreatedCustomer::Customer(customer)
    };
    Ok((status, ApiJson(answer)).into_response())
}

fn check_count(n: usize, field: &str, errors: &mut Vec<FieldError>) {
    if n > MAX_IDENTIFIERS_PER_KIND {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_IDENTIFIERS_PER_KIND} per request"),
        ));
    }
}

/// A customer as `GET /v1/customers/{id}` shows it: the profile, and which
/// of its identifiers are marked shared.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    #[serde(flatten)]
    pub customer: Customer,
    /// The keys of the profile's identifiers marked shared (`phone:+6563388888`,
    /// see `POST /v1/identities/{identifier}/shared`): they link nobody.
    pub shared_identifiers: Vec<String>,
}

/// A customer; a merged one's survivor (reads follow `merged_into`).
#[utoipa::path(
    get, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, body = CustomerView),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_customer(
    State(state): State<AppState>,
    _caller: Staff,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<CustomerView>, ApiError> {
    let id = parse_customer_id(&id)?;
    let customer = state.crm.get_customer(id).await?;
    let shared_identifiers = state.crm.shared_identifiers(&customer).await?;
    Ok(ApiJson(CustomerView {
        customer,
        shared_identifiers,
    }))
}

/// A JSON merge patch (RFC 7396) of the profile. `null` clears a field (for
/// `social`, removes that network). Changing `emails`, `phones` or `social`
/// claims and releases the identifiers accordingly.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCustomer {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub emails: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub phones: Option<Option<Vec<String>>>,
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, Option<String>>>)]
    pub social: Option<BTreeMap<String, Option<String>>>,
    pub status: Option<CustomerStatus>,
    /// `true` confirms that the customers owning the added identifiers are
    /// this person: they are merged into this customer in the same change.
    /// Without it, such an identifier answers 409 `identifier_taken`.
    pub merge: Option<bool>,
}

/// Tells a field that is `null` (`Some(None)`) from one that is absent (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(
    patch, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    request_body(content = PatchCustomer, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, body = Customer),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`identifier_taken`: an added identifier belongs to another customer (`customers`), nothing was changed; merge with `POST /v1/customers/{id}/merge` or send `\"merge\": true`. `customer_merged`: the id was merged into `merged_into`; edit that one", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_customer(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchCustomer>,
) -> Result<ApiJson<Customer>, ApiError> {
    let id = parse_customer_id(&id)?;
    let mut errors = Vec::new();
    let emails = body.emails.map(|e| {
        let raw = e.unwrap_or_default();
        check_count(raw.len(), "emails", &mut errors);
        input::emails(&raw, "emails", &mut errors)
    });
    let phones = body.phones.map(|p| {
        let raw = p.unwrap_or_default();
        check_count(raw.len(), "phones", &mut errors);
        input::phones(&raw, state.default_region, "phones", &mut errors)
    });
    if let Some(social) = &body.social {
        let set: BTreeMap<String, String> = social
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        input::social(&set, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let patch = CustomerPatch {
        name: body.name,
        emails,
        phones,
        social: body.social.map(|s| {
            s.into_iter()
                .map(|(k, v)| (k, v.map(|v| v.trim().to_string())))
                .collect()
        }),
        status: body.status,
    };
    let mode = link_mode(&caller, false, body.merge);
    Ok(ApiJson(state.crm.patch_customer(id, patch, mode).await?))
}

/// Erases the person (a right-to-erasure request): the customer and every
/// customer merged into it, with their identities, engagements, call
/// signals, suggestions and the merge records that name them, in one
/// transaction; `customer.erased` carries only ids.
#[utoipa::path(
    delete, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 204, description = "Erased"),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`customer_merged`: the id was merged into `merged_into`; erase that one", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_customer(
    State(state): State<AppState>,
    AdminOnly(caller): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_customer_id(&id)?;
    state.crm.delete_customer(id).await?;
    tracing::info!(customer_id = %id, actor = %caller.actor(), "customer erased");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListCustomers {
    /// Only customers updated at or after this time (RFC 3339).
    pub updated_since: Option<String>,
    /// 1 to 500, default 50.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// Customers by last update, oldest first (for syncing).
#[utoipa::path(
    get, path = "/v1/customers", tag = "customers",
    params(ListCustomers),
    responses(
        (status = 200, body = Page<Customer>),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_customers(
    State(state): State<AppState>,
    _caller: Staff,
    ApiQuery(query): ApiQuery<ListCustomers>,
) -> Result<ApiJson<Page<Customer>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let updated_since = query
        .updated_since
        .as_deref()
        .map(|raw| time::parse_input(raw).map_err(|e| ApiError::field("updated_since", e)))
        .transpose()?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode_position)
        .transpose()?
        .map(|(updated_at, id)| CustomerCursor { updated_at, id });
    let items = state
        .crm
        .list_customers(updated_since, after, limit)
        .await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last())
        .flatten()
        .map(|c| pagination::encode_position(&c.updated_at, &c.id));
    Ok(ApiJson(Page { items, next_cursor }))
}

pub fn parse_customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::not_found(
            ErrorCode::CustomerNotFound,
            format!("customer {raw:?} not found"),
        )
    })
}
